"""precision="auto" on the CPU: bf16 where the processor computes it natively.

The choice follows ``cpu_has_native_bf16``, which the tests replace to play
both kinds of CPU; explicit precisions are taken as given. A fit in bf16 keeps
what must stay in float32 (weights, batch-norm statistics, the kept best
weights) in float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from conftest import small_classifier
from resnetclf._acceleration import devices
from resnetclf._acceleration.devices import amp_dtype_for, cpu_has_native_bf16

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """Set what the capability check answers: ``native_bf16(True)``."""

    def answer(value: bool) -> None:
        monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: value)

    return answer


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_the_cpu_follows_the_capability_check(native_bf16, native):
    native_bf16(native)
    expected = torch.bfloat16 if native else None
    assert amp_dtype_for(CPU, "auto") is expected


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)],
)
def test_explicit_precisions_are_respected(native_bf16, native, precision, dtype):
    native_bf16(native)
    assert amp_dtype_for(CPU, precision) is dtype


def test_auto_is_fp32_when_onednn_is_disabled(monkeypatch, native_bf16):
    native_bf16(True)
    # Without oneDNN, bf16 convolutions take slow reference kernels.
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        assert not torch.backends.mkldnn.enabled
        assert amp_dtype_for(CPU, "auto") is None
    assert torch.backends.mkldnn.enabled
    assert amp_dtype_for(CPU, "auto") is torch.bfloat16


def test_auto_on_mps_stays_fp32(native_bf16):
    native_bf16(True)
    assert amp_dtype_for(torch.device("mps"), "auto") is None


def test_the_check_is_a_cached_bool():
    first = cpu_has_native_bf16()
    assert isinstance(first, bool)
    assert cpu_has_native_bf16() is first
    assert cpu_has_native_bf16.cache_info().hits >= 1


def _uncached_check():
    return cpu_has_native_bf16.__wrapped__()


@pytest.mark.parametrize("features", [{"avx512_bf16": True}, {"amx_bf16": True}])
def test_a_native_feature_with_onednn_bf16_is_native(monkeypatch, features):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features)
    assert _uncached_check() is True


def test_avx512_without_bf16_is_not_native(monkeypatch):
    # oneDNN runs bf16 on plain AVX-512 too, emulated: not worth it.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    caps = {"avx512_f": True, "avx512_bw": True, "avx512_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert _uncached_check() is False


def test_without_onednn_bf16_nothing_is_native(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert _uncached_check() is False


@pytest.mark.parametrize("error", [AttributeError, RuntimeError])
def test_a_failing_probe_falls_back_to_fp32_without_warnings(
    monkeypatch, native_bf16, error
):
    def broken():
        raise error("no such probe in this torch")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", broken)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _uncached_check() is False
    monkeypatch.setattr(devices, "cpu_has_native_bf16", _uncached_check)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amp_dtype_for(CPU, "auto") is None


def test_a_torch_without_get_capabilities_asks_the_private_probes(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert _uncached_check() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert _uncached_check() is False


def _autocast_dtypes_seen(clf, X, y, monkeypatch):
    """The autocast dtypes on the CPU during a fit and a predict of ``clf``."""
    seen = []
    original = torch.autocast.__init__

    def spy(self, device_type, dtype=None, *args, **kwargs):
        seen.append(dtype)
        original(self, device_type, dtype, *args, **kwargs)

    monkeypatch.setattr(torch.autocast, "__init__", spy)
    clf.fit(X, y).predict(X)
    return set(seen)


@pytest.mark.parametrize("native", [True, False])
def test_fit_and_predict_take_the_choice(tiny_images, monkeypatch, native_bf16, native):
    native_bf16(native)
    X, y = tiny_images
    seen = _autocast_dtypes_seen(small_classifier(max_iter=1), X, y, monkeypatch)
    assert seen == ({torch.bfloat16} if native else set())


def test_explicit_fp32_fit_runs_no_autocast(tiny_images, monkeypatch, native_bf16):
    native_bf16(True)
    X, y = tiny_images
    clf = small_classifier(max_iter=1, precision="fp32")
    assert _autocast_dtypes_seen(clf, X, y, monkeypatch) == set()


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}, {"lora_rank": 2}])
def test_a_bf16_fit_keeps_float32_state(tiny_images, extra):
    X, y = tiny_images
    clf = small_classifier(precision="bf16", validation_fraction=0.25, **extra)
    clf.fit(X, y)
    state = clf.module_.state_dict()
    floats = {k: v.dtype for k, v in state.items() if v.is_floating_point()}
    assert set(floats.values()) == {torch.float32}
    # Batch-norm statistics moved off their initial values, in float32.
    assert not torch.equal(
        state["bn1.running_var"], torch.ones_like(state["bn1.running_var"])
    )
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float32 or proba.dtype == np.float64
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
