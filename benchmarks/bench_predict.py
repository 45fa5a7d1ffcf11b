"""Speed of ``ResNetFineTuneClassifier.predict`` against a plain eval loop.

``predict`` is timed against two plain ``model.eval()`` loops under
``torch.inference_mode()`` that run the same fitted ``module_``: one over
float batches built beforehand (``plain_prebuilt``), one that also turns each
uint8 batch into normalised float (``plain_convert``, the fair comparison,
since ``predict`` also receives uint8). The three take turns for
``--repeats`` rounds, after an untimed warm-up, in a fresh process. Example::

    python benchmarks/bench_predict.py --arch resnet18 --height 40 --width 168 \\
        --predict-samples 1024 --repeats 3 --threads 2 --json out.json
"""

from __future__ import annotations

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
RATIO_LABELS = {
    "predict_vs_plain_prebuilt": "predict library / plain (pre-built)",
    "predict_vs_plain_convert": "predict library / plain (+convert)",
}


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


def measure_predict(config: BenchConfig) -> dict[str, Any]:
    """Images per second of ``predict`` and of the two plain eval loops."""
    device = _harness.resolve_device(config.device)
    amp_dtype = amp_dtype_for(device, "auto")
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
    result["predictions_agree"] = bool(
        np.array_equal(clf.classes_[plain], clf.predict(X))
    )
    return result


WORKERS: dict[str, _harness.Worker] = {"predict": measure_predict}


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """predict / each plain loop, by clock."""
    get, ratios = _suite.get, {}
    for clock in _harness.CLOCKS:
        key = "images_per_second" if clock == "wall" else "images_per_cpu_second"
        library = get(result, "predict", "library", key)
        ratios[clock] = {
            f"predict_vs_{plain}": _suite.ratio(
                library, get(result, "predict", plain, key)
            )
            for plain in ("plain_prebuilt", "plain_convert")
        }
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
    result["targets"] = _suite.check_targets(
        result["ratios"],
        [(name, config.clock, ">=", PREDICT_TARGET, True) for name in RATIO_LABELS],
    )
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures, ratios and target checks as a plain-text table."""
    c = BenchConfig.from_dict(result["config"])
    what = (
        f"{c.arch} {c.height}x{c.width}, batch {c.batch_size}, "
        f"{result['predict']['n_images']} images predicted, {c.repeats} round(s)"
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
