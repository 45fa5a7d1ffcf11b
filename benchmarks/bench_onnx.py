"""Speed of an exported ONNX file in onnxruntime, on the CPU, against predict.

The estimator is fitted for one short epoch (the weights do not change the
cost), written by ``export_onnx`` for uint8 ``(N, H, W)`` images (the data's
own form, so both sides scale and normalise in the timed part), and run by
onnxruntime's CPU provider in batches of ``--batch-size``, as ``predict``
runs, on ``--threads`` threads (``intra_op_num_threads``). Both return the
label of each image; they take turns for ``--repeats`` rounds, after an
untimed warm-up, in a fresh process. ``predict`` runs at the library's
automatic precision, and at fp32 too where that is bf16: the ONNX graph is
fp32. Needs the ``onnx`` extra. Example::

    python benchmarks/bench_onnx.py --arch resnet18 --height 40 --width 168 \\
        --n-samples 128 --predict-samples 512 --repeats 3 --threads 2 \\
        --json out.json
"""

from __future__ import annotations

import copy
import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _harness
import _suite
import numpy as np
from _suite import BenchConfig
from bench_predict import precision_name

from resnetclf._acceleration.devices import amp_dtype_for

RATIO_LABELS = {
    "onnx_vs_predict": "onnxruntime / predict",
    "onnx_vs_predict_fp32": "onnxruntime / predict at fp32",
}


def onnx_session(path: Path, threads: int | None):
    """An onnxruntime CPU session of the file, on ``threads`` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's choice
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"]
    )


def onnx_predict(session, X: np.ndarray, batch_size: int) -> np.ndarray:
    """Column index of each image's most probable class, batch by batch."""
    labels = []
    for start in range(0, len(X), batch_size):
        (proba,) = session.run(None, {"images": X[start : start + batch_size]})
        labels.append(proba.argmax(axis=1))
    return np.concatenate(labels)


def measure_onnx(config: BenchConfig) -> dict[str, Any]:
    """Images per second of ``predict`` and of the ONNX file in onnxruntime."""
    from resnetclf import export_onnx

    X_fit, y_fit = _suite.make_data(config.n_samples, config)
    X, _ = _suite.make_data(config.predict_samples, config, seed_offset=1)
    clf = _suite.fitted_classifier(X_fit, y_fit, config)
    bs = config.batch_size
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:
        start = time.perf_counter()
        path = export_onnx(clf, Path(folder) / "model.onnx", input_layout="NHW")
        export_seconds = time.perf_counter() - start
        file_bytes = path.stat().st_size
        session = onnx_session(path, config.threads)
    predictors: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "library": clf.predict,
        "onnxruntime": lambda images: clf.classes_[onnx_predict(session, images, bs)],
    }
    precision = amp_dtype_for(_harness.resolve_device(config.device), "auto")
    if precision is not None:
        fp32 = copy.copy(clf).set_params(precision="fp32")  # shares module_
        predictors["library_fp32"] = fp32.predict
    for predict in predictors.values():
        predict(X[:bs])  # warm-up, untimed
    runs = {name: functools.partial(predict, X) for name, predict in predictors.items()}
    rounds = _harness.alternate(runs, config.repeats)
    result: dict[str, Any] = {
        name: _harness.rates(len(X), watches) for name, watches in rounds.items()
    }
    labels = {name: watches[-1].result for name, watches in rounds.items()}
    result["n_images"] = int(len(X))
    result["precision"] = precision_name(precision)
    result["export_seconds"] = export_seconds
    result["file_bytes"] = file_bytes
    result["onnx_agrees_with_fp32_predict"] = bool(
        np.array_equal(
            labels["onnxruntime"], labels.get("library_fp32", labels["library"])
        )
    )
    return result


WORKERS: dict[str, _harness.Worker] = {"onnx": measure_onnx}


def compute_ratios(result: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """onnxruntime / predict on each clock, at both precisions of predict."""
    get, ratios = _suite.get, {}
    for clock in _harness.CLOCKS:
        key = "images_per_second" if clock == "wall" else "images_per_cpu_second"
        onnx = get(result, "onnx", "onnxruntime", key)
        library = get(result, "onnx", "library", key)
        fp32 = get(result, "onnx", "library_fp32", key) or library
        ratios[clock] = {
            "onnx_vs_predict": _suite.ratio(onnx, library),
            "onnx_vs_predict_fp32": _suite.ratio(onnx, fp32),
        }
    return ratios


def run_benchmark(
    config: BenchConfig,
    in_process: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time both in a fresh process; the JSON (``onnx``, ratios, no targets)."""
    if config.device != "cpu":
        raise SystemExit("bench_onnx.py compares on the CPU: --device cpu")
    tasks = [_harness.Task("onnx")]
    result = _suite.run_suite(Path(__file__), tasks, WORKERS, config, in_process, log)
    result["onnx"] = result.pop("raw")["onnx"][0]
    result["ratios"] = compute_ratios(result)
    result["targets"] = []  # a comparison to read, not a requirement
    return result


def format_report(result: dict[str, Any]) -> str:
    """The figures and ratios as a plain-text table."""
    c = BenchConfig.from_dict(result["config"])
    onnx = result["onnx"]
    what = (
        f"{c.arch} {c.height}x{c.width}, batch {c.batch_size}, "
        f"{onnx['n_images']} images predicted, {c.repeats} round(s), "
        f"library's precision {onnx['precision']}"
    )
    lines = _suite.header_lines(result, what) + [""]
    rows = [
        ("predict: library", "onnx", "library"),
        ("predict: library, fp32", "onnx", "library_fp32"),
        ("onnxruntime CPU, the exported file", "onnx", "onnxruntime"),
    ]
    lines += _suite.throughput_lines(result, [row for row in rows if row[2] in onnx])
    agree = "agree" if onnx["onnx_agrees_with_fp32_predict"] else "DISAGREE"
    lines += [
        f"  (labels of onnxruntime and fp32 predict {agree}; export took "
        f"{onnx['export_seconds']:.1f} s, file {onnx['file_bytes'] / 1e6:.1f} MB)",
        "",
    ]
    return "\n".join(lines + _suite.ratio_lines(result, RATIO_LABELS))


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry point; the result (None in a worker process)."""
    return _suite.main(
        argv,
        "Speed of the exported ONNX file in onnxruntime (CPU) against predict.",
        ["repeats", "predict_samples", "clock"],
        WORKERS,
        run_benchmark,
        format_report,
    )


if __name__ == "__main__":
    main()
