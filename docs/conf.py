"""Sphinx configuration for the scsalient documentation.

Build with ``make docs`` (``sphinx-build -M html docs docs/_build -W --keep-going``).

The build works offline. Links to other projects' documentation (intersphinx) are only
set up when ``SCSALIENT_DOCS_ONLINE=1`` is set or on Read the Docs, since fetching their
inventories without network access would fail the build.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import sys
import warnings
from datetime import date
from importlib.metadata import version as _version
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "_ext"))

from public_paths import PublicModule  # noqa: E402  (docs/_ext is on the path now)

# sphinx-autodoc-typehints uses a Sphinx API that Sphinx 10 removes; not ours to fix
warnings.filterwarnings("ignore", message=r".*_RstSnippetParser\.set_application.*")

# -- Project information -----------------------------------------------------------------

project = "scsalient"
author = "scsalient developers"
copyright = f"{date.today():%Y}, {author}"
release = _version("scsalient")
version = ".".join(release.split(".")[:2])

repository_url = "https://github.com/scsalient/scsalient"

# -- General configuration ---------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autodoc_typehints",
    "sphinxcontrib.bibtex",
    "member_filter",
    "prose_returns",
    "public_paths",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".ipynb": "myst-nb", ".md": "myst-nb"}
root_doc = "index"
default_role = "literal"
pygments_style = "default"

# autodoc / autosummary: one page per object, written into docs/generated/ (git-ignored)
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_default_options = {"show-inheritance": True}
autoclass_content = "class"

# napoleon: numpy-style docstrings only
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True

# sphinx-autodoc-typehints: types come from the signatures, never from the docstrings
typehints_defaults = "braces"
typehints_document_rtype = True
typehints_document_rtype_none = False  # no ":rtype: None" for functions that only write into adata
always_use_bars_union = True
typehints_fixup_module_name = PublicModule()

# myst / myst-nb: notebooks are stored with their outputs and never executed here
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
myst_url_schemes = ("http", "https", "mailto")
nb_execution_mode = "off"
nb_output_stderr = "remove"
nb_merge_streams = True

# bibliography
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
bibtex_default_style = "plain"

# -- Cross-references to other projects ------------------------------------------------------

_ONLINE = os.environ.get("SCSALIENT_DOCS_ONLINE") == "1" or os.environ.get("READTHEDOCS") == "True"
_INTERSPHINX = {
    "python": ("https://docs.python.org/3", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
    "mudata": ("https://mudata.readthedocs.io/en/latest/", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "pandas": ("https://pandas.pydata.org/docs/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
}
intersphinx_mapping = _INTERSPHINX if _ONLINE else {}

# Cross-reference checking (``nitpicky``) is opt-in: ``SCSALIENT_DOCS_NITPICKY=1``. References
# to other projects are only checked where their inventory is loaded; offline, that is none.
nitpicky = os.environ.get("SCSALIENT_DOCS_NITPICKY") == "1"
_TOP_LEVEL_MODULES = {
    "python": ["typing", "collections", "os", "pathlib", "Ellipsis"],
    "anndata": ["anndata"],
    "scanpy": ["scanpy"],
    "scvi-tools": ["scvi"],
    "mudata": ["mudata"],
    "numpy": ["numpy"],
    "pandas": ["pandas"],
    "torch": ["torch"],
    "matplotlib": ["matplotlib"],
    None: ["scipy", "h5py", "rich", "pooch", "openpyxl", "lightning"],  # not linked
}
_UNCHECKED = [
    module
    for project, modules in _TOP_LEVEL_MODULES.items()
    if project not in intersphinx_mapping
    for module in modules
]
nitpick_ignore_regex = [(r"py:.*", rf"{module}(\..*)?") for module in _UNCHECKED]


# -- Tutorials -------------------------------------------------------------------------------
# Notebooks live in the repository's top-level ``tutorials/`` folder. Sphinx only reads files
# below its source directory, so they are mirrored into ``docs/tutorials/`` (git-ignored)
# before every build: changed files are copied, removed ones deleted, unchanged ones left
# alone so incremental builds stay incremental.

_TUTORIAL_SUFFIXES = {".ipynb", ".png", ".jpg", ".jpeg", ".gif", ".svg"}


def _sync_tutorials(source: Path, target: Path) -> list[Path]:
    """Mirror the notebooks (and the images they show) of ``source`` into ``target``."""
    files = source.rglob("*") if source.is_dir() else []
    wanted = {
        path.relative_to(source)
        for path in files
        if path.is_file()
        and path.suffix.lower() in _TUTORIAL_SUFFIXES
        and ".ipynb_checkpoints" not in path.parts
    }
    if target.is_dir():
        for path in sorted(target.rglob("*"), reverse=True):
            rel = path.relative_to(target)
            if path.is_file() and rel not in wanted:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for rel in sorted(wanted):
        src, dst = source / rel, target / rel
        if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return sorted(rel for rel in wanted if rel.suffix == ".ipynb")


_tutorials = _sync_tutorials(ROOT / "tutorials", HERE / "tutorials")


def _tutorials_page(app, docname: str, source: list[str]) -> None:
    """Without notebooks, replace the glob toctree of tutorials.md (it would match nothing)."""
    if docname == "tutorials" and not _tutorials:
        source[0] = re.sub(
            r"```\{toctree\}.*?```", "No tutorials have been added yet.", source[0], flags=re.DOTALL
        )


# -- HTML output -----------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "scsalient"
html_static_path = ["_static"]
html_css_files = ["css/custom.css"]
html_show_sphinx = False
html_theme_options = {
    "repository_url": repository_url,
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_issues_button": True,
    "navigation_with_keys": False,
    # no "on this page" column where the width is needed: the landing page's code and figure,
    # and the wide table of "Where results are stored" (checked at 1280 px)
    "secondary_sidebar_items": {"**": ["page-toc"], "index": [], "stored_results": []},
}


def setup(app):
    """Connect the build-time hooks defined above."""
    app.connect("source-read", _tutorials_page)
