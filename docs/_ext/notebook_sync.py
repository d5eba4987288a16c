"""Sphinx extension: mirror ``<repo>/notebooks/`` into ``docs/notebooks/`` before the sources are read.

The notebooks stay where they live (``notebooks/``, run by nbval and ``make notebooks``); the docs
build renders a mirror of that folder (git-ignored), so that

* new notebooks (``notebooks/*.ipynb``, ``notebooks/exercises/**.ipynb``) appear on the site without
  any edit to the docs,
* links between notebooks (``[next](02_….ipynb)``) and to files next to them resolve as they do in
  Jupyter (a symlink would not do: MyST resolves link targets to their real path, outside ``docs/``).

Only files that changed are copied (with their modification times), and files that disappeared are
removed, so incremental builds stay incremental. ``.ipynb_checkpoints`` and hidden files are skipped.

The exercise notebooks (``notebooks/exercises/``) are nbgrader sources with their solutions in them:
the site shows the **learners' versions** (solutions and hidden tests removed, outputs cleared, as
``odistill exercises release`` writes them) and leaves out the teacher-only ``solutions.ipynb``. The
teacher's site, with everything, is built with ``ODISTILL_DOCS_TEACHER=1`` (``make docs-teacher``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MIRROR = "notebooks"
TEACHER_ENV = "ODISTILL_DOCS_TEACHER"


def teacher_site() -> bool:
    """Whether this build is the teacher's site (exercise solutions included)."""
    return os.environ.get(TEACHER_ENV, "") not in ("", "0", "false")


def student_version(path: Path) -> bytes | None:
    """What the site shows of an exercise notebook: its released (learner's) version; None: not shown."""
    import nbformat

    from odistill.classroom.grading import TEACHER_ONLY, release_notebook

    if path.name in TEACHER_ONLY:
        return None
    released = release_notebook(nbformat.read(path, as_version=4))
    return (nbformat.writes(released) + "\n").encode()


def _wanted(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return not any(p.startswith(".") or p == "__pycache__" for p in parts)


def sync(source: Path, target: Path, *, teacher: bool = True) -> None:
    """Mirror ``source`` into ``target``; without ``teacher``, exercise notebooks as learners get them."""
    if target.is_symlink():  # an older layout linked docs/notebooks -> ../notebooks
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    files = {p.relative_to(source) for p in source.rglob("*") if p.is_file() and _wanted(p, source)}
    released = {}
    if not teacher:
        for rel in sorted(files):
            if rel.parts[0] == "exercises" and rel.suffix == ".ipynb":
                released[rel] = student_version(source / rel)
        files = {rel for rel in files if released.get(rel, b"") is not None}
    for rel in sorted(files):
        src, dst = source / rel, target / rel
        if rel in released:
            if not (dst.is_file() and dst.read_bytes() == released[rel]):
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(released[rel])
            continue
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


OVERVIEW = "_overview.inc"  # written into the mirror; included by notebooks.md


def overview_table(readme: Path) -> str:
    """The table of notebooks with what each teaches and its runtime, from ``notebooks/README.md``, with
    its links made relative to the docs root (the mirror is ``docs/notebooks/``)."""
    import re

    lines = readme.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| notebook | what it teaches"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = "\n".join(lines[start:end])
    return re.sub(r"\]\(([^)/]+\.ipynb)\)", r"](notebooks/\1)", table) + "\n"


def _on_config_inited(app, config) -> None:
    source = Path(app.srcdir).parent / "notebooks"
    if not source.is_dir():
        from sphinx.errors import ExtensionError

        raise ExtensionError(
            f"notebook folder {source} not found (the docs render the repository's notebooks/)"
        )
    sync(source, Path(app.srcdir) / MIRROR, teacher=teacher_site())
    target = Path(app.srcdir) / MIRROR / OVERVIEW
    text = overview_table(source / "README.md")
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def setup(app):
    app.connect("config-inited", _on_config_inited)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
