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


def _mutation(tool, old, new="x"):
    return tool.Mutation("probe", "pkg.py", ((old, new),), (), "nothing")


def test_an_anchor_not_found_fails_loudly(tool, tmp_path):
    (tmp_path / "pkg.py").write_text("a = 1\n")
    with pytest.raises(tool.MutationError, match="probe: anchor not found"):
        tool.apply_mutation(_mutation(tool, "b = 2"), tmp_path)


def test_an_ambiguous_anchor_fails_loudly(tool, tmp_path):
    (tmp_path / "pkg.py").write_text("a = 1\na = 1\n")
    with pytest.raises(tool.MutationError, match="found 2 times"):
        tool.apply_mutation(_mutation(tool, "a = 1"), tmp_path)


def test_an_anchor_found_once_is_replaced(tool, tmp_path):
    (tmp_path / "pkg.py").write_text("a = 1\nb = 2\n")
    tool.apply_mutation(_mutation(tool, "b = 2", "b = 3"), tmp_path)
    assert (tmp_path / "pkg.py").read_text() == "a = 1\nb = 3\n"


def test_every_mutation_applies_to_the_current_source(tool, tmp_path):
    names = [m.name for m in tool.MUTATIONS]
    assert len(set(names)) == len(names)
    for mutation in tool.MUTATIONS:
        target = tmp_path / mutation.name / mutation.path
        target.parent.mkdir(parents=True)
        target.write_text((ROOT / mutation.path).read_text())
        tool.apply_mutation(mutation, tmp_path / mutation.name)
        assert target.read_text() != (ROOT / mutation.path).read_text()


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
