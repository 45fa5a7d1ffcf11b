"""Sphinx configuration for the resnetclf documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Needs the ``docs`` extra: ``pip install -e ".[docs]"`` (Sphinx, numpydoc,
myst-parser, pydata-sphinx-theme). Nothing is fetched from the network while
building (no intersphinx).
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

# The scientific-Python theme (scikit-learn, numpy, pandas use it): code
# blocks scroll sideways instead of being cut, the page's own table of
# contents sits in a right sidebar, and figures are held to the text width.
# It bundles its fonts and scripts, so the built site needs no network.
html_theme = "pydata_sphinx_theme"
html_title = f"resnetclf {release}"
html_theme_options = {
    "navbar_align": "left",
    # Page titles are long ("Benchmarks: speed, memory and accuracy ..."): the
    # first pages in the top bar, the rest under "More", all on one line.
    "header_links_before_dropdown": 4,
    "navbar_persistent": [],
    "navbar_end": ["search-button", "theme-switcher"],
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
# No left sidebar: the pages have no sub-pages, and the top bar lists them;
# the width goes to the text and its code (88 columns, the lint limit).
html_sidebars: dict[str, list[str]] = {"**": []}
html_static_path = ["_static"]
html_css_files = ["resnetclf.css"]
