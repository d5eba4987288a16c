"""Sphinx extension: mirror ``<repo>/notebooks/`` into ``docs/notebooks/`` before the sources are read.

The notebooks stay where they live (``notebooks/``, run by nbval and ``make notebooks``); the docs
build renders a mirror of that folder (git-ignored), so that

* new notebooks (``notebooks/*.ipynb``, ``notebooks/exercises/**.ipynb``) appear on the site without
  any edit to the docs,
* links between notebooks (``[next](02_….ipynb)``) and to files next to them resolve as they do in
  Jupyter (a symlink would not do: MyST resolves link targets to their real path, outside ``docs/``).

Only files that changed are copied (with their modification times), and files that disappeared are
removed, so incremental builds stay incremental. ``.ipynb_checkpoints`` and hidden files are skipped.
"""

from __future__ import annotations

import shutil
from pathlib import Path

MIRROR = "notebooks"


def _wanted(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(p.startswith(".") or p == "__pycache__" for p in parts)


def sync(source: Path, target: Path) -> None:
    if target.is_symlink():  # an older layout linked docs/notebooks -> ../notebooks
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    files = {p.relative_to(source) for p in source.rglob("*") if p.is_file() and _wanted(p, source)}
    for rel in sorted(files):
        src, dst = source / rel, target / rel
        if (
            dst.is_file()
            and dst.stat().st_size == src.stat().st_size
            and dst.read_bytes() == src.read_bytes()
        ):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for path in sorted(target.rglob("*"), reverse=True):  # children before their folders
        rel = path.relative_to(target)
        if path.is_file() and rel not in files:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _on_config_inited(app, config) -> None:
    source = Path(app.srcdir).parent / "notebooks"
    if not source.is_dir():
        from sphinx.errors import ExtensionError

        raise ExtensionError(
            f"notebook folder {source} not found (the docs render the repository's notebooks/)"
        )
    sync(source, Path(app.srcdir) / MIRROR)


def setup(app):
    app.connect("config-inited", _on_config_inited)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
