"""Sphinx extension: download, "Open in Colab" and source links at the top of every notebook page.

* **Download**: the notebook as the page shows it (for ``notebooks/exercises/``, the learner's version
  that ``notebook_sync`` mirrored: no solutions). The file is copied next to the page in the built site,
  so the link works offline and on any static host.
* **Open in Colab**: ``https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path>``,
  Colab's pattern for a notebook in a public GitHub repository. Not on exercise pages: the repository
  holds their nbgrader sources, with the solutions in them.
* **Source**: the notebook in the repository.

The repository comes from ``[project.urls] Repository`` in ``pyproject.toml`` (the one place it is
written) and the branch from ``odistill_repository_branch`` in ``conf.py``. The links are inserted
under the page's title.
"""

from __future__ import annotations

import html
import re
import shutil

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

from docutils import nodes

LINKS_CLASS = "odistill-notebook-links"


def repository_url(pyproject: Path) -> str:
    """``[project.urls] Repository`` of ``pyproject`` (a ``https://github.com/<owner>/<repo>`` URL)."""
    urls = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("urls", {})
    url = urls.get("Repository", "").rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(
            f"{pyproject}: [project.urls] Repository must be https://github.com/<owner>/<repo>, got {url!r}"
        )
    return url


def links(rel: str, repository: str, branch: str) -> list[tuple[str, str]]:
    """(label, href) of the links of the notebook ``notebooks/<rel>`` (``rel`` like ``01_x.ipynb``)."""
    name = Path(rel).name
    path = f"notebooks/{rel}"
    found = [(f"Download {name}", name)]
    if not rel.startswith("exercises/"):
        owner_repo = repository.removeprefix("https://github.com/")
        found.append(
            ("Open in Colab", f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/{path}")
        )
        found.append(("Source on GitHub", f"{repository}/blob/{branch}/{path}"))
    return found


def _notebook_rel(app, docname: str) -> str | None:
    if not docname.startswith("notebooks/"):
        return None
    if not (Path(app.srcdir) / f"{docname}.ipynb").is_file():
        return None
    return f"{docname.removeprefix('notebooks/')}.ipynb"


def add_links(app, doctree) -> None:
    rel = _notebook_rel(app, app.env.docname)
    if rel is None:
        return
    repository = repository_url(Path(app.confdir).parent / "pyproject.toml")
    items = []
    for label, href in links(rel, repository, app.config.odistill_repository_branch):
        extra = " download" if label.startswith("Download") else ""
        items.append(f'<a class="reference" href="{html.escape(href)}"{extra}>{html.escape(label)}</a>')
    raw = nodes.raw("", f'<div class="{LINKS_CLASS}">{"".join(items)}</div>', format="html")
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, raw)
        return
    title = next((i for i, child in enumerate(section.children) if isinstance(child, nodes.title)), -1)
    section.insert(title + 1, raw)


def copy_notebooks(app, exception) -> None:
    """Put each rendered notebook's file next to its page (what the download links point at)."""
    if exception is not None or app.builder.format != "html":
        return
    for docname in sorted(app.env.found_docs):
        rel = _notebook_rel(app, docname)
        if rel is not None:
            target = Path(app.outdir) / f"{docname}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(app.srcdir) / f"{docname}.ipynb", target)


def setup(app):
    app.add_config_value("odistill_repository_branch", "main", "html")
    app.connect("doctree-read", add_links)
    app.connect("build-finished", copy_notebooks)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
