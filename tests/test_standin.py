"""The trained stand-in backbone and the recipe benchmark that fine-tunes it."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from resnetclf import ResNetFineTuneClassifier
from resnetclf.datasets import _compose_digit_sums, make_digit_sums

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


TINY_STANDIN = dict(height=12, width=12, n_samples=40, epochs=1)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    module = _load("standin")
    cache = tmp_path_factory.mktemp("standin_cache")
    config = module.StandinConfig(**TINY_STANDIN)
    return module, config, cache, module.make_standin(config, cache, verbose=False)


# ------------------------------------------------------- source / target halves


def test_digit_halves_are_disjoint_and_cover_the_digits():
    source, target = _load("standin").digit_halves()
    assert len(np.intersect1d(source, target)) == 0
    assert len(source) + len(target) == 1797
    assert np.array_equal(np.union1d(source, target), np.arange(1797))
    # Stratified: every digit in both halves, in about equal numbers.
    from sklearn.datasets import load_digits

    digits = load_digits().target
    for half in (source, target):
        counts = np.bincount(digits[half], minlength=10)
        assert counts.min() >= 85


def test_digit_halves_are_the_same_on_every_call():
    standin = _load("standin")
    first, second = standin.digit_halves(), standin.digit_halves()
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_tasks_built_from_a_half_use_only_its_images():
    source, target = _load("standin").digit_halves()
    rng = np.random.RandomState(0)
    composition = _compose_digit_sums(300, 2, (16, 40), rng, target)
    assert np.isin(composition.digit_index, target).all()
    assert not np.isin(composition.digit_index, source).any()


def test_make_digit_sums_draws_from_digit_indices():
    X, y = make_digit_sums(50, n_digits=1, image_shape=(8, 8), digit_indices=[3, 3])
    from sklearn.datasets import load_digits

    digit = load_digits()
    assert (y == digit.target[3]).all()
    assert (X == X[0]).all()


@pytest.mark.parametrize("bad", [[], [[1, 2]], [-1], [1797], [0.5]])
def test_make_digit_sums_refuses_bad_digit_indices(bad):
    with pytest.raises(ValueError, match="digit_indices must be"):
        make_digit_sums(3, digit_indices=bad)


# ------------------------------------------------------------------- stand-in


def test_standin_is_a_torchvision_state_dict_with_a_ten_class_head(standin):
    _, config, _, made = standin
    state = torch.load(made.path, weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(state)  # strict: torchvision's layout exactly
    assert made.info["config"] == {**made.info["config"], **TINY_STANDIN}
    assert made.info["seconds"] > 0
    assert 1 <= made.info["best_epoch"] <= config.epochs
    assert "source half" in made.info["source_task"]


def test_standin_is_cached_by_its_settings(standin, monkeypatch):
    module, config, cache, made = standin

    def refuse(*args, **kwargs):
        raise AssertionError("a cached stand-in must not be trained again")

    monkeypatch.setattr(ResNetFineTuneClassifier, "fit", refuse)
    again = module.make_standin(config, cache, verbose=False)
    assert again.path == made.path and again.info == made.info
    other = module.StandinConfig(**{**TINY_STANDIN, "seed": 1})
    assert other.key() != config.key()
    with pytest.raises(AssertionError, match="must not be trained"):
        module.make_standin(other, cache, verbose=False)
    assert not list(cache.glob("*.partial.pth"))


# -------------------------------------------------------------- bench_recipes


def test_recipe_names_map_to_parameters():
    recipes = _load("bench_recipes")
    assert recipes.recipe_params("report_loop", []) is None
    assert recipes.recipe_params("scratch:report_loop", []) is None
    assert recipes.recipe_params("defaults", []) == {}
    assert recipes.recipe_params("defaults+layer_lr_decay=0", []) == {
        "layer_lr_decay": 0.0
    }
    best = recipes.recipe_params("best", ["ema_decay=0.98", "freeze_epochs=2"])
    assert best == {"ema_decay": 0.98, "freeze_epochs": 2}
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.recipe_params("defaults+nonsense", [])


def test_a_recipe_may_set_the_batch_size_and_its_steps_follow(monkeypatch):
    recipes = _load("bench_recipes")
    made = {}

    class Recorded:
        def __init__(self, **kwargs):
            made.update(kwargs)
            self.history_ = [{"val_accuracy": 0.5}]
            self.n_trainable_params_ = 1

        def fit(self, *args, **kwargs):
            return self

        def score(self, X, y):
            return 0.25

    monkeypatch.setattr(recipes, "ResNetFineTuneClassifier", Recorded)
    args = recipes._parser().parse_args(["--epochs", "2", "--batch-size", "32"])
    split = type("Split", (), {"train": np.arange(64), "val": [64], "test": [65]})
    X, y = np.zeros((66, 4, 4), np.uint8), np.zeros(66, int)
    params = recipes.recipe_params("defaults+batch_size=16", [])
    run = recipes.run_recipe("defaults+batch_size=16", params, (X, y), split,
                             args, 0, None)  # fmt: skip
    assert made["batch_size"] == 16 and made["max_iter"] == 2
    # 64 training images in batches of 16 for 2 epochs: 8 steps, not 4.
    assert run["seconds_per_step"] == pytest.approx(run["seconds"] / 8)


def test_best_takes_per_parameter_the_method_best_on_validation():
    recipes = _load("bench_recipes")

    def runs(*vals):
        return [{"val_accuracy": v} for v in vals]

    chosen = recipes.choose_best(
        {
            "defaults": runs(0.5, 0.5),
            "defaults+freeze_epochs=1": runs(0.6, 0.6),
            "defaults+freeze_epochs=2": runs(0.7, 0.7),
            "defaults+lora_rank=4": runs(0.4, 0.4),
            "defaults+ema_decay=0.98": runs(0.55, 0.55),
            "scratch:defaults": runs(0.9, 0.9),
        }
    )
    assert sorted(chosen) == ["ema_decay=0.98", "freeze_epochs=2"]


def test_paired_verdict():
    recipes = _load("bench_recipes")
    assert recipes.paired([0.9, 0.8, 0.85], [0.7, 0.6, 0.66])["verdict"] == "BETTER"
    assert recipes.paired([0.5, 0.9, 0.1], [0.6, 0.4, 0.3])["verdict"] == "noise"
    assert recipes.paired([0.1, 0.2, 0.15], [0.7, 0.6, 0.66])["verdict"] == "WORSE"


def test_bench_recipes_from_the_standin_smoke(standin, tmp_path):
    recipes = _load("bench_recipes")
    _, _, cache, made = standin
    out = tmp_path / "recipes.json"
    names = [
        "report_loop",
        "defaults",
        "defaults+lora_rank=4",
        "defaults+freeze_epochs=1",
        "best",
        "scratch:defaults",
    ]
    result = recipes.main(
        ["--task", "sums2", "--init", "standin", "--n-samples", "60",
         "--height", "12", "--width", "40", "--epochs", "2", "--seeds", "2",
         "--batch-size", "16", "--standin-cache", str(cache),
         "--standin-samples", "40", "--standin-epochs", "1",
         "--standin-width", "12", "--recipes", ",".join(names),
         "--json", str(out), "--plot", str(tmp_path / "curves.png")]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["best_methods"] == result["best_methods"]
    assert saved["config"]["digits"] == "target"
    assert saved["standin"]["seconds"] == made.info["seconds"]  # the cached file
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert list(result["summary"]) == names
    for name in names:
        for run in result["runs"][name]:
            assert len(run["val_accuracy_per_epoch"]) == 2
            assert run["val_accuracy"] == max(run["val_accuracy_per_epoch"])
            assert run["seconds_per_step"] > 0
    summary = result["summary"]
    assert summary["defaults"]["vs_other_init"]["verdict"] in {
        "noise", "BETTER", "WORSE"
    }  # fmt: skip
    assert "vs_report_loop" in summary["defaults+lora_rank=4"]
    lora = summary["defaults+lora_rank=4"]["n_trainable_params"]
    assert 0 < lora < summary["defaults"]["n_trainable_params"]
    # Chosen on validation only: exactly the methods that beat the defaults.
    base_val = summary["defaults"]["val_mean"]
    expected = [
        m
        for m in ("lora_rank=4", "freeze_epochs=1")
        if summary[f"defaults+{m}"]["val_mean"] > base_val
    ]
    assert sorted(result["best_methods"]) == sorted(expected)
    # The docs' table is printed from the JSON alone.
    table = recipes.markdown_table(saved)
    assert table.count("\n") == len(names) + 1
    assert (
        f"| `defaults+lora_rank=4` | {summary['defaults+lora_rank=4']['test_mean']:.3f}"
        in table
    )


def test_unknown_recipe_fails_before_any_training(tmp_path, monkeypatch):
    recipes = _load("bench_recipes")
    monkeypatch.setattr(
        recipes, "make_standin", lambda *a, **k: pytest.fail("trained first")
    )
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.main(["--recipes", "defaults,defaults+nope", "--seeds", "1"])


def test_gpu_recipes_script_parses():
    import subprocess

    checked = subprocess.run(
        ["bash", "-n", str(BENCHMARKS / "gpu_recipes.sh")], capture_output=True
    )
    assert checked.returncode == 0, checked.stderr


def test_library_variants_set_the_switches_they_name():
    from resnetclf._switches import Switches, current

    recipes = _load("bench_recipes")
    assert recipes.recipe_params("defaults@unfused_adam+decay_all", []) == {}
    for bad in ("defaults@nope", "report_loop@unfused_adam"):
        with pytest.raises(ValueError, match="unknown recipe"):
            recipes.recipe_params(bad, [])
    fields = set(Switches.__dataclass_fields__)
    for name, changes in recipes.LIBRARY_VARIANTS.items():
        assert changes and set(changes) <= fields, name
    with recipes.library_variants(["nearest_rotation", "unfused_adam"]):
        assert current().rotation_sampling == "nearest"
        assert not current().fused_optimizer
        assert current().fold_gray_stem
    assert current() == Switches()


def test_saved_runs_merge_into_one_table(tmp_path):
    recipes = _load("bench_recipes")

    def saved(names, test):
        runs = {
            n: [
                {"val_accuracy": 0.5, "test_accuracy": t, "seconds_per_step": 1.0,
                 "val_accuracy_per_epoch": [0.5], "n_trainable_params": 10}
                for t in test
            ]
            for n in names
        }  # fmt: skip
        config = {"task": "sums2", "n_samples": 60, "epochs": 1, "seeds": 2,
                  "height": 12, "width": 40}  # fmt: skip
        return {"config": config, "runs": runs}

    merged = recipes.merged_results(
        [saved(["report_loop"], [0.5, 0.6]), saved(["defaults"], [0.3, 0.35])]
    )
    assert merged["summary"]["defaults"]["vs_report_loop"]["verdict"] == "WORSE"
    # Later seeds of the same recipes join the earlier ones, in order.
    more = recipes.merged_results(
        [saved(["report_loop", "defaults"], [0.5, 0.6]),
         saved(["report_loop", "defaults"], [0.7, 0.8])]
    )  # fmt: skip
    assert [r["test_accuracy"] for r in more["runs"]["defaults"]] == [
        0.5, 0.6, 0.7, 0.8
    ]  # fmt: skip
    assert more["config"]["seeds"] == 4
    other = saved(["defaults"], [0.3, 0.35])
    other["config"]["epochs"] = 3
    with pytest.raises(ValueError, match="must share"):
        recipes.merged_results([saved(["report_loop"], [0.5, 0.6]), other])
