"""Smoke tests of the gallery scripts in ``examples/``.

Each example runs from top to bottom with ``RESNETCLF_EXAMPLES_QUICK=1``,
which every example reads to train for one epoch on a few images. The Dask
example runs as a user would run it (``python examples/plot_x.py``, in a
fresh process), so that its ``__main__`` guard and worker processes are
exercised; the others run in this process as ``__main__`` (``runpy``), which
saves starting Python, torch and scikit-learn once per example. One torch
thread: on such small tensors, threads cost more than they gain (a lot more
on a busy machine). Matplotlib draws off screen. The examples train from
random weights, so nothing is downloaded; ``TORCH_HOME`` points to an empty
folder all the same.
"""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("plot_*.py"))

#: A line each example prints when it gets to its end.
LAST_WORDS = {
    "plot_digits.py": "test accuracy:",
    "plot_cross_validation.py": "most frequent class:",
    "plot_grid_search.py": "test accuracy of the refitted best model:",
    "plot_dask_grid_search.py": "test accuracy of the best model:",
    "plot_merged_dataset.py": "the loaded model gives the same probabilities: True",
    "plot_digit_sums.py": "digits read right:",
    "plot_feature_extractor.py": "test accuracy of the best C:",
    "plot_calibration.py": "calibrated with:",
}


#: Examples that need a process of their own: a ``__main__`` guard and workers.
OWN_PROCESS = {"plot_dask_grid_search.py"}


def test_every_example_is_covered():
    assert sorted(LAST_WORDS) == [path.name for path in SCRIPTS]


def _run(script: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "RESNETCLF_EXAMPLES_QUICK": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TORCH_HOME": str(tmp_path / "torch_home"),
        "TMPDIR": str(tmp_path),
    }
    env.pop("RESNETCLF_MERGED_DIR", None)  # the stand-in path, offline
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run_here(script: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[str, str]:
    """Run ``script`` as ``__main__`` in this process; its stdout and warnings."""
    import matplotlib
    import matplotlib.pyplot as plt

    monkeypatch.setenv("RESNETCLF_EXAMPLES_QUICK", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("RESNETCLF_MERGED_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    matplotlib.use("Agg")
    capsys.readouterr()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runpy.run_path(str(script), run_name="__main__")
    finally:
        plt.close("all")
    return capsys.readouterr().out, "\n".join(str(w.message) for w in caught)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_example_runs_to_the_end(script, tmp_path, monkeypatch, capsys):
    if script.name in OWN_PROCESS:
        result = _run(script, tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        out, messages = result.stdout, result.stderr
    else:
        out, messages = _run_here(script, tmp_path, monkeypatch, capsys)
    assert LAST_WORDS[script.name] in out, out[-3000:]
    # The examples scale their images; none may trip the [0, 1] range warning.
    assert "taken as already scaled" not in messages
    if script.name == "plot_merged_dataset.py":
        _check_merged_dataset_run(out, tmp_path)


def _check_merged_dataset_run(out, tmp_path):
    assert "STAND-IN" in out  # no RESNETCLF_MERGED_DIR: it says so
    (out,) = tmp_path.glob("resnetclf-merged-*")
    assert (out / "resnet-step.safetensors").stat().st_size > 0
    saved = sorted(path.name for path in (out / "model").iterdir())
    assert saved == ["model.safetensors"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_example_reads_as_a_gallery_script(script):
    """A title docstring, ``# %%`` cells, no argument parser, short."""
    source = script.read_text()
    tree = ast.parse(source)
    docstring = ast.get_docstring(tree)
    assert docstring and docstring.splitlines()[0].startswith("====")
    assert source.count("\n# %%") >= 3
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (
            node.names
            if isinstance(node, ast.Import)
            else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"argparse", "click", "sys"}
    assert len(source.splitlines()) <= 120
