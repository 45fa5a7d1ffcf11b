"""Break the library on purpose, one named way at a time, and run its tests.

Each mutation below is a behaviour the tests promise to guard, broken by an
edit in a copy of the package. An edit is anchored by *function and pattern*,
not by line: it names the function (its qualified name, such as
``EpochLoop.train_epoch``) and a snippet of its code, and the snippet must
occur exactly once inside that function. The snippet is matched loosely: any
run of whitespace (newlines included) matches any other, and a trailing comma
may come before a closing bracket, so code that moves, gets reformatted or
grows elsewhere in the file leaves the anchor intact. Only a change to the
targeted code itself (the function renamed, the snippet rewritten) breaks it.

For each mutation the script copies ``resnetclf/``, ``tests/`` and
``pyproject.toml`` to a temporary folder, applies the edit there, and runs the
tests named for it against the copy: pytest runs from the copy's root, and the
same process first imports ``resnetclf`` and checks that it comes from the
copy, not from the checkout or an installed package. A mutation is *killed*
when a test fails, *SURVIVED* when all pass. The tests are first run on the
unbroken copy, where they must pass, or nothing would be learnt from their
failing.

Usage::

    python tools/mutation_check.py              # every mutation (~10-20 min)
    python tools/mutation_check.py --list       # names, anchors, tests
    python tools/mutation_check.py --check-anchors  # resolve anchors, run nothing
    python tools/mutation_check.py --only no-shuffle --only stem-fold-1
    python tools/mutation_check.py --whole-files  # run the whole test files

Exit status: 0 when every mutation is killed, 1 when any survives, 2 when the
check itself cannot be trusted (a function or snippet not found, or found
more than once; the baseline failing; the wrong package imported; pytest
erroring rather than failing).

A developer tool: too slow for every CI run. ``tests/test_mutation_tool.py``
checks its plumbing, and that every anchor resolves in the current source, in
CI.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("resnetclf", "tests", "pyproject.toml")
# Exit status of the runner when the copy is not what got imported.
WRONG_PACKAGE = 97
# In an edit's replacement, stands for the code the snippet matched.
MATCH = "<MATCH>"


class MutationError(RuntimeError):
    """The check cannot be trusted: fix the tool or the tests, not the code."""


@dataclass(frozen=True)
class Edit:
    """Replace ``old``, found once in ``function``'s code, with ``new``.

    ``old`` is a code snippet, matched loosely (see :func:`snippet_pattern`).
    ``new`` is inserted as written; ``<MATCH>`` in it stands for the matched
    code, and its lines after the first get the indentation of the line where
    the match starts.
    """

    function: str  # qualified name: "f", "Class.method", "f.inner"
    old: str
    new: str


@dataclass(frozen=True)
class Mutation:
    """A named breakage: edits to functions of one file of the package."""

    name: str
    path: str  # relative to the repository root
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]  # pytest node ids, relative to the repository root
    breaks: str  # what a user would see


# A mutant's rotation of up to 10 degrees, drawn from torch's global RNG.
_ROTATE_10 = (
    '__import__("resnetclf._augment", fromlist=["_"]).RotationAugmentation(10.0)'
)
CORE = "tests/test_core_behaviour.py::"
HEADS = "tests/test_heads.py::"
CKPT = "tests/test_checkpoint.py::"
ROBUST = "tests/test_robustness.py::"
EST = "tests/test_estimator.py::"
HOSTILE = "tests/test_hostile_files.py::"

MUTATIONS: tuple[Mutation, ...] = (
    # ---- the breakages the core's tests were written against
    Mutation(
        "skip-best-epoch-restore",
        "resnetclf/_training.py",
        (
            Edit(
                "BestWeights.restore",
                "if self.state_dict is not None:\n"
                "    model.load_state_dict(self.state_dict)",
                "pass",
            ),
        ),
        (
            CORE + "test_fit_restores_the_best_epochs_weights",
            CORE + "test_validation_loss_is_that_of_the_unaugmented_images",
            ROBUST + "test_keyboard_interrupt_keeps_best_weights",
            ROBUST + "test_parallel_fits_sharing_a_checkpoint_path",
        ),
        "fit returns the last epoch's weights, not the best epoch's",
    ),
    Mutation(
        "frozen-stages-require-grad",
        "resnetclf/_param_groups.py",
        (
            Edit(
                "freeze_stages",
                "module.requires_grad_(stage not in frozen)",
                "module.requires_grad_(True)",
            ),
        ),
        (CORE + "test_frozen_stages_get_no_gradient_and_no_update",),
        "frozen stages get gradients: memory and time for nothing",
    ),
    Mutation(
        "frozen-batch-norms-train",
        "resnetclf/_param_groups.py",
        (Edit("set_frozen_to_eval", "module.eval()", "module.train()"),),
        (CORE + "test_frozen_batch_norms_keep_the_initial_statistics",),
        "a frozen stage's batch-norm statistics drift during training",
    ),
    Mutation(
        "weights-at-head-rate",
        "resnetclf/_param_groups.py",
        (
            Edit(
                "StageParamGroups.__init__",
                "(scaled, lr * stem_fold, weight_decay / stem_fold)",
                '(scaled, stage_lrs["fc"] * stem_fold, weight_decay / stem_fold)',
            ),
            Edit(
                "StageParamGroups.__init__",
                "(decayed, lr, weight_decay)",
                '(decayed, stage_lrs["fc"], weight_decay)',
            ),
        ),
        (
            CORE + "test_every_weight_trains_at_its_stages_rate",
            CORE + "test_cosine_schedule_with_warmup_drives_the_optimizer",
        ),
        "conv/linear weights of every stage train at the head's rate",
    ),
    Mutation(
        "stem-fold-1",
        "resnetclf/_base.py",
        (
            Edit(
                "ResNetFineTuneBase._epoch_loop",
                "stem_fold = 3 if model.conv1.in_channels == 1 else 1",
                "stem_fold = 1",
            ),
        ),
        (
            CORE + "test_folded_stem_kernel_trains_at_three_times_the_stem_rate",
            CORE + "test_every_weight_trains_at_its_stages_rate",
        ),
        "the folded grayscale stem trains at a third of its rate",
    ),
    Mutation(
        "in-place-checkpoint-writer",
        "resnetclf/_checkpoint.py",
        (
            Edit(
                "write_atomic",
                "tmp_path, fd = _create_temporary_file(path)",
                'with open(path, "wb") as file:\n'
                "    if isinstance(content, bytes):\n"
                "        file.write(content)\n"
                "    else:\n"
                "        content(file)\n"
                "return path\n" + MATCH,
            ),
        ),
        (
            CKPT + "test_kill_in_the_middle_of_writing_keeps_the_previous_file",
            CKPT + "test_kill_during_repeated_saves_leaves_a_loadable_file",
        ),
        "a kill mid-save leaves a truncated checkpoint",
    ),
    # ---- what users rely on
    Mutation(
        "predict-rotates",
        "resnetclf/_training.py",
        (
            Edit(
                "predict_logits",
                "inputs = [images.get(indices)]",
                "inputs = [images.get(indices, " + _ROTATE_10 + ")]",
            ),
        ),
        (CORE + "test_predict_is_deterministic_and_sees_unrotated_normalised_images",),
        "predictions are augmented: random, and of rotated images",
    ),
    Mutation(
        "no-training-augmentation",
        "resnetclf/_training.py",
        (
            Edit(
                "EpochLoop.train_epoch",
                "data.images.get(indices, augment, self.generator)",
                "data.images.get(indices)",
            ),
        ),
        (CORE + "test_augmentation_rotates_training_batches_only",),
        "rotation_degrees has no effect on training",
    ),
    Mutation(
        "validation-augmented",
        "resnetclf/_training.py",
        (
            Edit(
                "EpochLoop.evaluate",
                "data.images.get(indices)",
                "data.images.get(indices, " + _ROTATE_10 + ")",
            ),
        ),
        (
            CORE + "test_validation_loss_is_that_of_the_unaugmented_images",
            CORE + "test_augmentation_rotates_training_batches_only",
        ),
        "the best epoch is chosen on rotated validation images",
    ),
    Mutation(
        "no-shuffle",
        "resnetclf/_training.py",
        (
            Edit(
                "EpochLoop.train_epoch",
                "data.indices[self.rng.permutation(len(data))]",
                "data.indices",
            ),
        ),
        (CORE + "test_training_batches_are_normalised_and_shuffled_each_epoch",),
        "batches come in the data's order every epoch",
    ),
    Mutation(
        "same-order-every-epoch",
        "resnetclf/_training.py",
        (
            Edit(
                "EpochLoop.train_epoch",
                "self.rng.permutation(len(data))",
                "np.random.RandomState(0).permutation(len(data))",
            ),
        ),
        (CORE + "test_training_batches_are_normalised_and_shuffled_each_epoch",),
        "shuffled once: every epoch repeats the same batches",
    ),
    Mutation(
        "early-stopping-off-by-one",
        "resnetclf/_training.py",
        (
            Edit(
                "EpochLoop.end_epoch",
                "self._no_improvement >= plan.n_iter_no_change",
                "self._no_improvement > plan.n_iter_no_change",
            ),
        ),
        (CORE + "test_early_stopping_stops_after_exactly_patience_epochs",),
        "early stopping waits one epoch more than n_iter_no_change",
    ),
    Mutation(
        "normalization-ignored",
        "resnetclf/_fit_setup.py",
        (
            Edit(
                "_plan",
                "resolve_normalization(estimator.normalization)",
                "resolve_normalization((0.5, 0.5))",
            ),
        ),
        (
            CORE + "test_training_batches_are_normalised_and_shuffled_each_epoch",
            CORE + "test_predict_normalises_with_the_fitted_statistics",
        ),
        "the normalization parameter has no effect",
    ),
    Mutation(
        "split-not-stratified",
        "resnetclf/_split.py",
        (
            Edit(
                "stratified_holdout",
                "for cls in np.flatnonzero(n_val):\n"
                "    members = np.flatnonzero(y_encoded == cls)\n"
                "    is_val[rng.choice(members, size=n_val[cls], replace=False)]"
                " = True",
                "is_val[rng.choice(len(y_encoded), n_val.sum(), replace=False)] = True",
            ),
        ),
        (CORE + "test_internal_validation_split_is_stratified",),
        "the internal validation split ignores the classes' shares",
    ),
    Mutation(
        "classes-encoded-by-first-appearance",
        "resnetclf/_tasks.py",
        (
            Edit(
                "SingleLabelClassification.encode",
                "classes, y_encoded = np.unique(y, return_inverse=True)",
                "classes, first, y_encoded = np.unique(\n"
                "    y, return_index=True, return_inverse=True\n"
                ")\n"
                "y_encoded = np.argsort(np.argsort(first))[y_encoded]",
            ),
        ),
        (CORE + "test_unsorted_string_labels_keep_their_meaning",),
        "predict names the wrong class when labels are not first seen sorted",
    ),
    Mutation(
        "warm-start-reinitialises",
        "resnetclf/_base.py",
        (
            Edit(
                "ResNetFineTuneBase._initial_module",
                "return self.module_.to(plan.device)",
                "return self.module_.to(plan.device).apply(\n"
                "    lambda m: getattr(m, 'reset_parameters', lambda: None)()\n"
                ")",
            ),
        ),
        (CORE + "test_warm_start_continues_from_the_fitted_weights",),
        "warm_start=True starts from fresh weights",
    ),
    Mutation(
        "warm-start-forgets-history",
        "resnetclf/_base.py",
        (
            Edit(
                "ResNetFineTuneBase._epoch_loop",
                "history=list(self.history_) if warm else []",
                "history=[]",
            ),
        ),
        (CORE + "test_warm_start_continues_from_the_fitted_weights",),
        "warm_start=True restarts n_iter_ and history_",
    ),
    Mutation(
        "schedule-not-stepped",
        "resnetclf/_training.py",
        (Edit("EpochLoop.end_epoch", "self.schedule.step(score)", "pass"),),
        (
            CORE + "test_cosine_schedule_with_warmup_drives_the_optimizer",
            CORE + "test_plateau_divides_the_optimizers_rates_after_patience",
        ),
        "lr_schedule has no effect with validation data",
    ),
    Mutation(
        "warmup-ignored",
        "resnetclf/_schedules.py",
        (Edit("_warmup_cosine_factor", "if epoch < warmup_epochs:", "if False:"),),
        (CORE + "test_cosine_schedule_with_warmup_drives_the_optimizer",),
        "warmup_epochs has no effect",
    ),
    Mutation(
        "plateau-never-reduces",
        "resnetclf/_schedules.py",
        (Edit("EpochSchedule.__init__", "factor=0.1,", "factor=1.0,"),),
        (CORE + "test_plateau_divides_the_optimizers_rates_after_patience",),
        'lr_schedule="plateau" never lowers the rates',
    ),
    # ---- defects once fixed, kept fixed
    Mutation(
        "checkpoint-reads-umask",
        "resnetclf/_checkpoint.py",
        (
            Edit(
                "_create_temporary_file",
                "flags = os.O_WRONLY",
                "os.umask(os.umask(0))\n" + MATCH,
            ),
        ),
        (CKPT + "test_checkpoint_mode_follows_umask_without_touching_it",),
        "saving a checkpoint changes the process-wide umask for a moment",
    ),
    Mutation(
        "warm-start-checked-after-work",
        "resnetclf/_base.py",
        (
            Edit(
                "ResNetFineTuneBase._check_network",
                "check_kept_network(self.module_, data.model_channels, plan.head,"
                " data.classes)",
                "pass",
            ),
        ),
        (ROBUST + "test_refused_warm_start_refit_leaves_the_estimator_as_it_was",),
        "a refused warm start fails mid-training, its estimator changed",
    ),
    Mutation(
        "predict-moves-module",
        "resnetclf/_inference.py",
        (Edit("run_batched", "module_on(module, device)", "module.to(device)"),),
        (EST + "test_predict_leaves_the_fitted_estimator_as_it_was",),
        "predict on another device moves the fitted network there",
    ),
    Mutation(
        "checkpoint-folder-not-synced",
        "resnetclf/_checkpoint.py",
        (Edit("write_atomic", "_fsync_folder(path.parent)", "pass"),),
        (CKPT + "test_file_then_folder_are_synced_around_the_rename",),
        "a power loss right after a save can lose the rename",
    ),
    Mutation(
        "sum-convolution-shifted",
        "resnetclf/heads.py",
        (Edit("digit_sum_log_probs", "(v, n_values - 1 - v)", "(0, n_values - 1)"),),
        (HEADS + "test_sum_distribution_matches_enumeration",),
        "the digit-sum head trains on a wrong likelihood of the sum",
    ),
    Mutation(
        "digits-read-in-slot-order",
        "resnetclf/heads.py",
        (Edit("_DigitSumReader.read_digits", "digits.gather(1, order)", "digits"),),
        (HEADS + "test_digits_are_read_left_to_right",),
        "predict_digits returns the digits out of their left-to-right order",
    ),
    Mutation(
        "sum-in-half-precision",
        "resnetclf/heads.py",
        (
            Edit(
                "_DigitSumReader.forward",
                "F.log_softmax(logits.float(), dim=2)",
                "F.log_softmax(logits.bfloat16(), dim=2)",
            ),
        ),
        (HEADS + "test_head_output_is_float32_under_bf16_autocast",),
        "under bf16 the sum's rarest classes lose their probability",
    ),
    Mutation(
        "loaded-tensors-unchecked",
        "resnetclf/_persistence.py",
        (Edit("_check_fitted", "if got.get(k) != want.get(k)", "if False"),),
        (
            HOSTILE + "test_tensors_that_do_not_fit_the_settings_are_refused",
            "tests/test_persistence.py::test_weights_of_another_network_are_refused",
        ),
        "a model file whose tensors disagree with its settings fails past load",
    ),
    Mutation(
        "random-state-position-unchecked",
        "resnetclf/_model_json.py",
        (Edit("_random_state", "and 0 <= pos <= 624", ""),),
        (HOSTILE + "test_a_lying_random_state_is_refused",),
        "a model file's RandomState reads outside its keys",
    ),
    Mutation(
        "foreign-head-loaded",
        "resnetclf/_backbone.py",
        (
            Edit(
                "_load_weights",
                "[] if head_fits or partial_head else",
                "[] if True else",
            ),
        ),
        (
            "tests/test_cross_task_weights.py::"
            "test_ten_class_checkpoint_loads_into_a_37_class_fit",
            HEADS + "test_weights_from_a_saved_model_with_a_head",
        ),
        "weights from another task refuse, or load its head into the new one",
    ),
)


def snippet_pattern(snippet: str) -> re.Pattern:
    """A regular expression matching ``snippet`` however it is laid out.

    A run of whitespace between two word characters matches any non-empty
    run of whitespace; anywhere else, any run, empty or not. Before a closing
    bracket, a trailing comma may appear (a formatter adds one when it splits
    a call over lines).
    """
    parts = []
    tokens = re.findall(r"\s+|\w+|[^\w\s]", snippet.strip())
    for index, token in enumerate(tokens):
        if token.isspace():
            before, after = tokens[index - 1], tokens[index + 1]
            word = re.match(r"\w", before[-1]) and re.match(r"\w", after[0])
            parts.append(r"\s+" if word else r"\s*")
            continue
        if token in ")]}" and (index == 0 or tokens[index - 1] != ","):
            parts.append(r"\s*(?:,\s*)?")
        elif index and not tokens[index - 1].isspace():
            if not (re.match(r"\w", token) and re.match(r"\w", tokens[index - 1])):
                parts.append(r"\s*")
        parts.append(re.escape(token))
    return re.compile("".join(parts))


def function_span(tree: ast.Module, qualname: str, text: str) -> tuple[int, int]:
    """Character offsets in ``text`` of the function ``qualname``'s code."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if name == qualname and not isinstance(child, ast.ClassDef):
                    found.append(child)
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    if len(found) != 1:
        raise LookupError(
            "function not found" if not found else f"{len(found)} functions named so"
        )
    node = found[0]
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    return starts[node.lineno - 1], starts[node.end_lineno]


def mutate_source(text: str, edits: tuple[Edit, ...], where: str) -> str:
    """``text`` with ``edits`` applied; MutationError when an anchor does not
    resolve to exactly one place, or the result does not parse."""
    for edit in edits:
        anchor = f"{where}: {edit.function}: "
        try:
            start, end = function_span(ast.parse(text), edit.function, text)
        except LookupError as exc:
            raise MutationError(anchor + str(exc)) from None
        matches = list(snippet_pattern(edit.old).finditer(text, start, end))
        if len(matches) != 1:
            found = "not found" if not matches else f"found {len(matches)} times"
            raise MutationError(f"{anchor}snippet {found}:\n{edit.old}")
        match = matches[0]
        line_start = text.rfind("\n", 0, match.start()) + 1
        indent = re.match(r"[ \t]*", text[line_start:]).group()
        new = edit.new.replace(MATCH, match.group())
        new = new.replace("\n", "\n" + indent)
        text = text[: match.start()] + new + text[match.end() :]
    try:
        ast.parse(text)
    except SyntaxError as exc:
        raise MutationError(f"{where}: the mutated code does not parse: {exc}")
    return text


def apply_mutation(mutation: Mutation, root: Path) -> None:
    """Apply ``mutation``'s edits to the copy under ``root``; MutationError
    says which anchor does not resolve, and why."""
    path = root / mutation.path
    if not path.is_file():
        raise MutationError(f"{mutation.name}: no file {mutation.path}")
    where = f"{mutation.name} ({mutation.path})"
    path.write_text(mutate_source(path.read_text(), mutation.edits, where))


def check_anchors(mutations: list[Mutation]) -> None:
    """Resolve every anchor against the checkout, running nothing."""
    for mutation in mutations:
        where = f"{mutation.name} ({mutation.path})"
        source = (ROOT / mutation.path).read_text()
        mutated = mutate_source(source, mutation.edits, where)
        if ast.dump(ast.parse(mutated)) == ast.dump(ast.parse(source)):
            raise MutationError(f"{where}: the edits change nothing")


def make_copy(destination: Path) -> Path:
    """Copy what the tests need from the checkout to ``destination``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


# Run in the copy's root: import the package, check where it came from, then
# hand over to pytest in the same process, which reuses the imported module.
_BOOT = (
    """
import os, sys
root = os.path.realpath(sys.argv[1])
import resnetclf
where = os.path.realpath(resnetclf.__file__)
if not where.startswith(root + os.sep):
    print(f"imported {where}, not the copy in {root}", file=sys.stderr)
    sys.exit(%d)
import pytest
sys.exit(pytest.main(sys.argv[2:]))
"""
    % WRONG_PACKAGE
)


def run_tests(root: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    """Run ``tests`` on the copy at ``root``; (exit status, output, seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        "-c",
        _BOOT,
        str(root),
        "-x",
        "-q",
        "-rf",
        "-p",
        "no:cacheprovider",
        *tests,
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(
            command,
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        return -1, output + "\n(timed out)", time.monotonic() - start
    if done.returncode == WRONG_PACKAGE:
        raise MutationError(done.stderr.strip())
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def first_failure(output: str) -> str:
    match = re.search(r"^FAILED (\S+)", output, flags=re.MULTILINE)
    return match.group(1).split("::")[-1] if match else "?"


def tests_for(mutation: Mutation, whole_files: bool) -> list[str]:
    if not whole_files:
        return list(mutation.tests)
    return sorted({test.split("::")[0] for test in mutation.tests})


def check(
    mutations: list[Mutation], whole_files: bool, timeout: float, baseline: bool
) -> list[tuple[Mutation, str, str, float]]:
    """Run every mutation; rows of (mutation, verdict, detail, seconds)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="mutation_check_") as tmp:
        if baseline:
            clean = make_copy(Path(tmp) / "baseline")
            tests = sorted({t for m in mutations for t in tests_for(m, whole_files)})
            print(f"baseline: {len(tests)} test(s) on the unbroken copy", flush=True)
            status, output, _ = run_tests(clean, tests, timeout)
            if status != 0:
                raise MutationError(
                    f"the tests fail without any mutation (exit {status}):\n"
                    f"{output[-3000:]}"
                )
        for index, mutation in enumerate(mutations):
            copy = make_copy(Path(tmp) / f"m{index}")
            apply_mutation(mutation, copy)
            status, output, seconds = run_tests(
                copy, tests_for(mutation, whole_files), timeout
            )
            if status == 1:
                row = (mutation, "killed", first_failure(output), seconds)
            elif status == -1:
                row = (mutation, "killed", "timed out", seconds)
            elif status == 0:
                row = (mutation, "SURVIVED", "all passed", seconds)
            else:
                raise MutationError(
                    f"{mutation.name}: pytest exited {status} (an error, not a "
                    f"test failure):\n{output[-3000:]}"
                )
            rows.append(row)
            print(f"{mutation.name}: {row[1]} ({row[2]}, {seconds:.0f} s)", flush=True)
            shutil.rmtree(copy, ignore_errors=True)
    return rows


def table(rows, whole_files: bool) -> str:
    lines = [
        "| breakage | file | tests run | result |",
        "|---|---|---|---|",
    ]
    for mutation, verdict, detail, _ in rows:
        tests = ", ".join(
            t.split("::")[-1] if not whole_files else t
            for t in tests_for(mutation, whole_files)
        )
        result = f"killed by `{detail}`" if verdict == "killed" else f"**{verdict}**"
        lines.append(
            f"| `{mutation.name}`: {mutation.breaks} | `{mutation.path}` | "
            f"{tests} | {result} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--list", action="store_true", help="list the mutations")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only these (repeat)"
    )
    parser.add_argument(
        "--whole-files",
        action="store_true",
        help="run the whole test files of each mutation, not just its tests",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per test run"
    )
    parser.add_argument(
        "--check-anchors",
        action="store_true",
        help="only check that every anchor resolves; run no tests",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the run on the unbroken copy",
    )
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            functions = ", ".join(dict.fromkeys(edit.function for edit in m.edits))
            print(f"{m.name}  ({m.path}: {functions}): {m.breaks}")
            for test in m.tests:
                print(f"    {test}")
        return 0
    unknown = sorted(set(args.only or ()) - set(by_name))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; see --list")
    chosen = [by_name[n] for n in args.only] if args.only else list(MUTATIONS)
    try:
        # Every anchor first: a stale one fails before any slow test run.
        check_anchors(chosen)
        if args.check_anchors:
            print(f"{len(chosen)} mutation(s): every anchor resolves")
            return 0
        rows = check(chosen, args.whole_files, args.timeout, not args.no_baseline)
    except MutationError as exc:
        print(f"mutation check FAILED TO RUN: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(rows, args.whole_files))
    survived = [m.name for m, verdict, _, _ in rows if verdict != "killed"]
    print()
    print(
        f"{len(rows) - len(survived)} of {len(rows)} mutations killed"
        + (f"; SURVIVED: {', '.join(survived)}" if survived else "")
    )
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
