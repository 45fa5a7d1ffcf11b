"""Sphinx configuration for the resnetclf documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Needs the ``docs`` extra: ``pip install -e ".[docs]"``. Nothing is fetched from
the network while building (no intersphinx).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The package is normally installed (editable) in the environment; this makes a
# plain checkout build too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resnetclf  # noqa: E402

project = "resnetclf"
author = "resnetclf contributors"
copyright = "resnetclf contributors"  # noqa: A001
release = resnetclf.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown: "$ ..." fences stay literal; heading anchors for in-page links.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: members in source order; the signature shows defaults, types come
# from the numpydoc sections.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options: dict = {}

# numpydoc: the class docstring already lists parameters and attributes; the
# methods are documented once by autodoc's :members:, so numpydoc must not add
# its own member tables (they would duplicate objects).
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"resnetclf {release}"
html_theme_options = {
    "description": "Fine-tune torchvision ResNets on numpy image arrays, "
    "scikit-learn style.",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
