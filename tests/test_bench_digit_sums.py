"""The four-digit-sum benchmark's plumbing, at a size of seconds."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _bench():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("bench_digit_sums")


def test_test_digits_never_appear_in_training_images():
    bench = _bench()
    train, test = bench.digit_pools()
    assert len(np.intersect1d(train, test)) == 0
    X, y, digits = bench.make_images(6, train, seed=0)
    assert X.shape == (6, 40, 168) and np.array_equal(digits.sum(axis=1), y)


def test_every_method_runs_and_reports(tmp_path):
    bench = _bench()
    out = tmp_path / "runs.json"
    result = bench.main(
        [
            "--methods", "report_loop,defaults,digit_sum", "--inits", "scratch",
            "--n-train", "40", "--n-test", "12", "--epochs", "1", "--seeds", "1",
            "--batch-size", "16", "--set", "rotation_degrees=0", "--json", str(out),
        ]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["runs"].keys() == {
        "scratch:report_loop", "scratch:defaults", "scratch:digit_sum"
    }  # fmt: skip
    assert saved["params"] == {"rotation_degrees": 0}
    (digit_run,) = saved["runs"]["scratch:digit_sum"]
    assert isinstance(digit_run["digit_accuracy"], float)
    assert saved["runs"]["scratch:defaults"][0]["digit_accuracy"] is None
    assert "| digit_sum | scratch | 40 x 1 | 1 |" in bench.markdown_table(result)


def test_saved_runs_make_one_table_and_plot(tmp_path):
    bench = _bench()
    runs = {"seed": 0, "test_accuracy": 0.5, "digit_accuracy": 0.75,
            "val_accuracy_per_epoch": [0.2, 0.4], "seconds_per_epoch": 3.0}  # fmt: skip
    paths = []
    for n_train, seed in ((40, 0), (40, 1), (80, 0)):
        path = tmp_path / f"runs{n_train}_{seed}.json"
        saved = {"n_train": n_train, "epochs": 2,
                 "runs": {"scratch:digit_sum": [{**runs, "seed": seed}]}}  # fmt: skip
        path.write_text(json.dumps(saved))
        paths.append(str(path))
    plot = tmp_path / "curves.png"
    result = bench.main(["--markdown", *paths, "--plot", str(plot)])
    table = bench.markdown_table(result)
    assert (
        "| digit_sum | scratch | 40 x 2 | 2 | 0.500 ± 0.000 | 0.750 ± 0.000 |" in table
    )
    assert "| digit_sum | scratch | 80 x 2 | 1 | 0.500 | 0.750 |" in table
    assert plot.stat().st_size > 0
