"""The plumbing of tools/mutation_check.py, and that its anchors still match.

The mutation check itself is slow (it runs tests once per breakage) and is run
by hand; these checks are fast and run in CI, so that a change to the code a
breakage targets shows up here rather than when someone next runs the tool.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "mutation_check", ROOT / "tools" / "mutation_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _mutation(tool, function, old, new="x"):
    return tool.Mutation(
        "probe", "pkg.py", (tool.Edit(function, old, new),), (), "nothing"
    )


SOURCE = """\
def f(values):
    total = sum(values)
    return total


class C:
    def g(self, a, b):
        return max(a, b)
"""


def test_a_function_not_found_fails_loudly(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    with pytest.raises(tool.MutationError, match="C.h: function not found"):
        tool.apply_mutation(_mutation(tool, "C.h", "max(a, b)"), tmp_path)


def test_a_snippet_outside_its_function_is_not_found(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    with pytest.raises(tool.MutationError, match="f: snippet not found"):
        tool.apply_mutation(_mutation(tool, "f", "max(a, b)"), tmp_path)


def test_an_ambiguous_snippet_fails_loudly(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    with pytest.raises(tool.MutationError, match="found 2 times"):
        tool.apply_mutation(_mutation(tool, "C.g", "a, b"), tmp_path)


def test_an_edit_that_breaks_the_syntax_fails_loudly(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    with pytest.raises(tool.MutationError, match="does not parse"):
        tool.apply_mutation(_mutation(tool, "f", "sum(values)", "sum(("), tmp_path)


def test_the_snippet_is_replaced_within_its_function(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    tool.apply_mutation(_mutation(tool, "C.g", "max(a, b)", "min(a, b)"), tmp_path)
    assert (tmp_path / "pkg.py").read_text() == SOURCE.replace("max", "min")


def test_a_multiline_replacement_takes_the_lines_indentation(tool, tmp_path):
    (tmp_path / "pkg.py").write_text(SOURCE)
    edit = _mutation(tool, "f", "total = sum(values)", "print(1)\n" + tool.MATCH)
    tool.apply_mutation(edit, tmp_path)
    assert (
        "    print(1)\n    total = sum(values)\n" in (tmp_path / "pkg.py").read_text()
    )


def test_anchors_survive_moved_and_reformatted_code(tool, tmp_path):
    # Code added above, the function reformatted by a formatter: same mutant.
    moved = (
        "import os\n\n\ndef new_helper():\n    return os.sep\n\n\n"
        + SOURCE.replace(
            "return max(a, b)", "return max(\n            a,\n            b,\n        )"
        )
    )
    (tmp_path / "pkg.py").write_text(moved)
    tool.apply_mutation(_mutation(tool, "C.g", "max(a, b)", "min(a, b)"), tmp_path)
    assert "return min(a, b)" in (tmp_path / "pkg.py").read_text()
    assert "def new_helper" in (tmp_path / "pkg.py").read_text()


def test_every_anchor_resolves_in_the_current_source(tool):
    names = [m.name for m in tool.MUTATIONS]
    assert len(set(names)) == len(names)
    tool.check_anchors(list(tool.MUTATIONS))


def test_the_tool_exits_2_when_an_anchor_does_not_resolve(tool, monkeypatch, capsys):
    stale = tool.Mutation(
        "stale",
        "resnetclf/_training.py",
        (tool.Edit("EpochLoop.no_such_method", "pass", "pass"),),
        ("tests/test_core_behaviour.py::x",),
        "nothing",
    )
    monkeypatch.setattr(tool, "MUTATIONS", (stale,))
    assert tool.main(["--check-anchors"]) == 2
    assert "no_such_method: function not found" in capsys.readouterr().err


def test_every_named_test_exists(tool):
    for mutation in tool.MUTATIONS:
        assert mutation.tests, mutation.name
        for test in mutation.tests:
            path, name = test.split("::")
            source = (ROOT / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.MULTILINE), test


def _fake_package(root: Path, tests: str) -> Path:
    (root / "resnetclf").mkdir(parents=True)
    (root / "resnetclf" / "__init__.py").write_text("")
    (root / "tests").mkdir()
    (root / "tests" / "test_probe.py").write_text(tests)
    return root


def test_tests_run_against_the_copy(tool, tmp_path):
    root = _fake_package(
        tmp_path,
        "import resnetclf\n"
        f"def test_where():\n    assert {str(tmp_path)!r} in resnetclf.__file__\n"
        "def test_fails():\n    assert False\n",
    )
    status, output, _ = tool.run_tests(root, ["tests/test_probe.py::test_where"], 120)
    assert status == 0, output
    status, output, _ = tool.run_tests(root, ["tests/test_probe.py::test_fails"], 120)
    assert status == 1 and tool.first_failure(output) == "test_fails"


def test_a_copy_without_the_package_is_refused(tool, tmp_path):
    # Nothing to import from the copy: resnetclf would come from elsewhere.
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_probe.py").write_text("def test_x():\n    pass\n")
    with pytest.raises(tool.MutationError, match="not the copy"):
        tool.run_tests(tmp_path, ["tests/test_probe.py"], 120)


def test_unknown_mutation_name_is_a_usage_error(tool, capsys):
    with pytest.raises(SystemExit) as exited:
        tool.main(["--only", "no-such-breakage"])
    assert exited.value.code == 2
    assert "no-such-breakage" in capsys.readouterr().err
