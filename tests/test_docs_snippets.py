"""The code in README.md and docs/*.md stays valid as the package changes.

Fast checks only (no training): every Python block compiles, every name a
block imports from ``resnetclf`` exists, every ``resnetclf ...`` command line
parses with the command's own parser, and every example script named exists.
Running the blocks themselves trains networks for minutes; that is done by
hand (see ``docs/examples.md``), and the example scripts are run by
``tests/test_examples.py``.
"""

from __future__ import annotations

import ast
import re
import shlex
import textwrap
from pathlib import Path

import pytest

import resnetclf
import resnetclf.datasets
from resnetclf.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A fence, possibly indented (inside a list item), and its body.
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", re.S | re.M)


def _blocks(language: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(2) == language:
                line = text[: match.start()].count("\n") + 1
                code = textwrap.dedent(match.group(3))
                found.append((f"{page.relative_to(ROOT)}:{line}", code))
    return found


PYTHON = _blocks("python")
SHELL = _blocks("bash")


def test_the_pages_have_blocks():
    assert len(PYTHON) >= 10 and len(SHELL) >= 5


@pytest.mark.parametrize("where, code", PYTHON, ids=[w for w, _ in PYTHON])
def test_python_block_compiles_and_imports_what_exists(where, code):
    tree = ast.parse(code, filename=where)
    modules = {"resnetclf": resnetclf, "resnetclf.datasets": resnetclf.datasets}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in modules:
            for alias in node.names:
                assert hasattr(modules[node.module], alias.name), (
                    f"{where}: {node.module} has no {alias.name}"
                )


def _command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for where, code in SHELL:
        # Join continued lines, drop comments, split on "&&".
        joined = code.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            for part in line.split("&&"):
                if part.strip().startswith("resnetclf "):
                    lines.append((where, shlex.split(part)[1:]))
    return lines


COMMANDS = _command_lines()


def test_the_pages_show_both_commands():
    assert {words[0] for _, words in COMMANDS} >= {"train", "predict"}


@pytest.mark.parametrize(
    "where, words", COMMANDS, ids=[f"{w} {' '.join(a)}" for w, a in COMMANDS]
)
def test_command_line_parses(where, words):
    if "--help" in words:
        return
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:  # argparse's way to refuse
        pytest.fail(f"{where}: 'resnetclf {' '.join(words)}' exits with {exc.code}")


def test_example_scripts_named_in_the_pages_exist():
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"examples/(\w+\.py)", page.read_text()))
    assert named
    missing = sorted(n for n in named if not (ROOT / "examples" / n).exists())
    assert not missing
