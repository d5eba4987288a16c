"""Sphinx configuration of the odistill documentation site.

Build:  ``make docs``  (= ``sphinx-build -W --keep-going -b html docs docs/_build/html``), offline.

* Pages are MyST Markdown (``*.md``); the notebooks are rendered by myst-nb from their **committed
  outputs** — nothing is executed (``nb_execution_mode = "off"``). ``_ext/notebook_sync.py`` mirrors
  ``../notebooks`` into ``docs/notebooks`` (git-ignored) at the start of each build, so every notebook
  there (and under ``notebooks/exercises/``) is picked up by the glob toctrees of ``notebooks.md`` and
  the generated ``exercises.md``, with no hand-made copies.
* ``cli.md`` is generated at build time from ``odistill.cli.build_parser()`` (``_ext/cli_reference.py``),
  and ``exercises.md`` from the notebooks' exercise sections (``_ext/exercise_index.py``).
* The API pages use autodoc + napoleon (Google-style docstrings).
* MathJax is served from the site itself (``sphinx-mathjax-offline``), so ``$…$`` math in the notebooks
  renders without network access.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # import the package from this checkout even if it is not installed

from notebook_links import repository_url  # noqa: E402

import odistill  # noqa: E402

REPOSITORY = repository_url(ROOT / "pyproject.toml")  # [project.urls] Repository

# -- project ---------------------------------------------------------------------------------------
project = "odistill"
author = "The odistill contributors"
copyright = "the odistill contributors"
release = odistill.__version__
version = release

# -- extensions ------------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST Markdown pages + notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/: math renders offline
    "notebook_sync",  # mirrors ../notebooks into docs/notebooks (git-ignored) before reading
    "cli_reference",  # writes cli.md from the argparse parser
    "exercise_index",  # writes exercises.md from the notebooks' exercise sections
    "config_reference",  # writes api/config_fields.md from DistillConfig's field metadata
    "output_blocks",  # marks printed tables among the notebooks' text outputs (custom.css sizes them)
    "notebook_links",  # download / Open in Colab / source links on every notebook page
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "**/.ipynb_checkpoints",
    "Thumbs.db",
    ".DS_Store",
    # Only notebooks are pages under notebooks/ (a README.md or scratch Markdown there is not).
    "notebooks/*.md",
    "notebooks/**/*.md",
]

# -- notebooks (myst-nb) ---------------------------------------------------------------------------
nb_execution_mode = "off"  # render the committed outputs; never execute during the docs build
nb_output_stderr = "remove"  # progress bars and library warnings are noise on a static page
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3  # notebooks can link to "#what-we-learned" style anchors

# -- API reference (autodoc + napoleon) ------------------------------------------------------------
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
autosummary_generate = False  # api/index.md uses autosummary tables only, no stub files
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- docstring fixes ------------------------------------------------------------------------------
# Markdown pipe tables read well in help() and are used in some docstrings; reStructuredText has no
# such tables, so they are turned into list-tables here (only a block of "|" lines whose second line is
# a |---| separator is touched).
import re  # noqa: E402

_PIPE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _pipe_cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line)]


def _pipe_tables_to_rst(lines: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if (
            line.lstrip().startswith("|")
            and i + 1 < len(lines)
            and _PIPE_SEPARATOR.match(lines[i + 1])
            and "|" in lines[i + 1]
        ):
            indent = line[: len(line) - len(line.lstrip())]
            rows = [_pipe_cells(line)]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_pipe_cells(lines[i]))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}.. list-table::", f"{indent}   :header-rows: 1", ""]
            for row in rows:
                for j, cell in enumerate(row):
                    out.append(f"{indent}   {'* -' if j == 0 else '  -'} {cell}".rstrip())
            out.append("")
            continue
        out.append(line)
        i += 1
    return out


def _fix_docstring(app, what, name, obj, options, lines):
    lines[:] = _pipe_tables_to_rst(lines)


def setup(app):
    app.connect("autodoc-process-docstring", _fix_docstring)


# GitHub's mark (Octicons "mark-github", MIT licence), for the footer link to the repository.
_GITHUB_ICON = (DOCS / "_static" / "github.svg").read_text(encoding="utf-8").strip()

# -- HTML ------------------------------------------------------------------------------------------
smartquotes_action = "qe"  # keep "--" as typed (CLI flags like --student); only quotes and ellipses
html_theme = "furo"
html_title = f"odistill {release}"
html_short_title = "odistill"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_last_updated_fmt = None
html_show_sourcelink = False
html_copy_source = False
html_favicon = "_static/favicon.svg"
html_theme_options = {
    "sidebar_hide_name": False,
    "navigation_with_keys": True,
    "footer_icons": [
        {
            "name": "Source code on GitHub",
            "url": REPOSITORY,
            "html": _GITHUB_ICON,
            "class": "",
        }
    ],
}
odistill_repository_branch = "main"  # the branch that the notebooks' Colab and source links open
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# Keep builds reproducible and quiet on machines without a display.
os.environ.setdefault("MPLBACKEND", "Agg")
