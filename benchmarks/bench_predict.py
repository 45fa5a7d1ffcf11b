"""Speed of ``ResNetFineTuneClassifier.predict`` against a plain eval loop.

``predict`` is timed against two plain ``model.eval()`` loops under
``torch.inference_mode()`` that run the same fitted ``module_``: one over
float batches built beforehand (``plain_prebuilt``), one that also turns each
uint8 batch into normalised float (``plain_convert``, the fair comparison,
since ``predict`` also receives uint8). All three run at the library's
automatic precision; on the CPU, ``predict`` and the pre-built loop also run
at the other of fp32 and bf16 (``library_fp32`` or ``library_bf16``, and
``plain_prebuilt_fp32`` or ``_bf16``): the loop at each precision is the
bound of ``predict`` at it. They take turns for ``--repeats`` rounds, after
an untimed warm-up, in a fresh process. Example::

    python benchmarks/bench_predict.py --arch resnet18 --height 40 --width 168 \\
        --predict-samples 1024 --repeats 3 --threads 2 --json out.json
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness
import _suite
import numpy as np
import torch
from _suite import BenchConfig
from torch import nn

from resnetclf._acceleration.devices import amp_dtype_for

# predict / plain eval loop, at least.
PREDICT_TARGET = 1.0
# predict in bf16 / predict in fp32, at least, on a CPU that computes bf16
# natively (where the library predicts in bf16).
BF16_PREDICT_TARGET = 1.8
RATIO_LABELS = {
    "predict_vs_plain_prebuilt": "predict library / plain (pre-built)",
    "predict_vs_plain_convert": "predict library / plain (+convert)",
    "predict_bf16_vs_fp32": "predict library, bf16 / fp32",
    "plain_bf16_vs_fp32": "plain (pre-built), bf16 / fp32",
}
PRECISIONS = ("fp32", "bf16")


def plain_predict_prebuilt(
    model: nn.Module, batches: Sequence[torch.Tensor], amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """A plain ``model.eval()`` loop over float batches already on the device."""
    model.eval()
    predictions = []
    with (
        torch.inference_mode(),
        torch.autocast(
            batches[0].device.type, dtype=amp_dtype, enabled=amp_dtype is not None
        ),
    ):
        for batch in batches:
            predictions.append(model(batch).argmax(dim=1))
    return torch.cat(predictions).cpu()


def plain_predict_uint8(
    model: nn.Module,
    X: np.ndarray,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """A plain eval loop that also converts each uint8 batch to float."""
    model.eval()
    predictions = []
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None),
    ):
        for start in range(0, len(X), batch_size):
            raw = torch.from_numpy(X[start : start + batch_size]).to(device)
            predictions.append(model(_suite.normalise(raw)).argmax(dim=1))
    return torch.cat(predictions).cpu()


def precision_name(amp_dtype: torch.dtype | None) -> str:
    """``"fp32"``, ``"bf16"`` or ``"fp16"``: the name of an autocast dtype."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]


def measure_predict(config: BenchConfig) -> dict[str, Any]:
    """Images per second of ``predict`` and of the plain eval loops."""
    device = _harness.resolve_device(config.device)
    amp_dtype = amp_dtype_for(device, "auto")
    auto = precision_name(amp_dtype)
    X_fit, y_fit = _suite.make_data(config.n_samples, config)
    X, _ = _suite.make_data(config.predict_samples, config, seed_offset=1)
    clf = _suite.fitted_classifier(X_fit, y_fit, config)
    model = clf.module_.to(device)
    bs = config.batch_size
    batches = [
        _suite.normalise(torch.from_numpy(X[i : i + bs])).to(device)
        for i in range(0, len(X), bs)
    ]
    runs: dict[str, Callable[[], object]] = {
        "library": lambda: clf.predict(X),
        "plain_prebuilt": lambda: plain_predict_prebuilt(model, batches, amp_dtype),
        "plain_convert": lambda: plain_predict_uint8(model, X, bs, device, amp_dtype),
    }
    if device.type == "cpu" and auto in PRECISIONS:
        other = next(p for p in PRECISIONS if p != auto)
        other_dtype = amp_dtype_for(device, other)
        at_other = copy.copy(clf).set_params(precision=other)  # shares module_
        runs[f"library_{other}"] = lambda: at_other.predict(X)
        runs[f"plain_prebuilt_{other}"] = lambda: plain_predict_prebuilt(
            model, batches, other_dtype
        )
        at_other.predict(X[:bs])
        plain_predict_prebuilt(model, batches[:1], other_dtype)
    # Warm-up on one batch each.
    clf.predict(X[:bs])
    plain_predict_prebuilt(model, batches[:1], amp_dtype)
    plain_predict_uint8(model, X[:bs], bs, device, amp_dtype)
    rounds = _harness.alternate(runs, config.repeats, device)
    plain = plain_predict_uint8(model, X, bs, device, amp_dtype).numpy()
    result: dict[str, Any] = {
        name: _harness.rates(len(X), watches) for name, watches in rounds.items()
    }
    result["n_images"] = int(len(X))
    result["precision"] = auto
    result["predictions_agree"] = bool(
        np.array_equal(clf.classes_[plain], clf.predict(X))
    )
    return result


WORKERS: dict[str, _harness.Worker] = {"predict": measure_predict}


def _at_precision(predict: dict[str, Any], name: str, precision: str) -> str:
    """The key of run ``name`` (``library``, ``plain_prebuilt``) at
    ``precision``: the plain name at the library's own precision."""
    return name if predict.get("precision") == precision else f"{name}_{precision}"


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """predict / each plain loop, and bf16 / fp32 for both, by clock."""
    get, ratios = _suite.get, {}
    predict = result["predict"]
    for clock in _harness.CLOCKS:
        key = "images_per_second" if clock == "wall" else "images_per_cpu_second"
        library = get(result, "predict", "library", key)
        ratios[clock] = {
            f"predict_vs_{plain}": _suite.ratio(
                library, get(result, "predict", plain, key)
            )
            for plain in ("plain_prebuilt", "plain_convert")
        }
        for name, label in (("library", "predict"), ("plain_prebuilt", "plain")):
            bf16, fp32 = (
                get(result, "predict", _at_precision(predict, name, p), key)
                for p in ("bf16", "fp32")
            )
            ratios[clock][f"{label}_bf16_vs_fp32"] = _suite.ratio(bf16, fp32)
    return ratios


def run_benchmark(
    config: BenchConfig,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time predict in a fresh process; the JSON (``predict``, ratios, targets)."""
    tasks = [_harness.Task("predict")]
    result = _suite.run_suite(Path(__file__), tasks, WORKERS, config, in_process, log)
    result["predict"] = result.pop("raw")["predict"][0]
    result["ratios"] = compute_ratios(result)
    bf16_applies = result["predict"].get("precision") == "bf16" and (
        _harness.resolve_device(config.device).type == "cpu"
    )
    result["targets"] = _suite.check_targets(
        result["ratios"],
        [
            (name, config.clock, ">=", PREDICT_TARGET, True)
            for name in ("predict_vs_plain_prebuilt", "predict_vs_plain_convert")
        ]
        + [
            (
                "predict_bf16_vs_fp32",
                config.clock,
                ">=",
                BF16_PREDICT_TARGET,
                bf16_applies,
            )
        ],
    )
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures, ratios and target checks as a plain-text table."""
    c = BenchConfig.from_dict(result["config"])
    what = (
        f"{c.arch} {c.height}x{c.width}, batch {c.batch_size}, "
        f"{result['predict']['n_images']} images predicted, {c.repeats} round(s), "
        f"library's precision {result['predict'].get('precision', '?')}"
    )
    lines = _suite.header_lines(result, what) + [""]
    lines += _suite.throughput_lines(
        result,
        [
            ("predict: library", "predict", "library"),
            ("predict: plain eval, pre-built float batches", "predict",
             "plain_prebuilt"),
            ("predict: plain eval, uint8->float per batch", "predict",
             "plain_convert"),
            *((f"predict: library, {p}", "predict", f"library_{p}")
              for p in PRECISIONS if f"library_{p}" in result["predict"]),
            *((f"predict: plain eval, pre-built, {p}", "predict",
               f"plain_prebuilt_{p}")
              for p in PRECISIONS if f"plain_prebuilt_{p}" in result["predict"]),
        ],
    )  # fmt: skip
    agree = "agree" if result["predict"]["predictions_agree"] else "DISAGREE"
    lines += [f"  (predictions of library and plain loop {agree})", ""]
    return "\n".join(lines + _suite.ratio_lines(result, RATIO_LABELS))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    return _suite.main(
        argv,
        "Speed of ResNetFineTuneClassifier.predict against a plain eval loop.",
        ["repeats", "predict_samples", "clock"],
        WORKERS,
        run_benchmark,
        format_report,
    )


if __name__ == "__main__":
    main()
