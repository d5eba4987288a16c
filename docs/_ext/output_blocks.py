"""Sphinx extension: notebook text outputs that read well in the page column.

Every code block and output on the site wraps its long lines at the column's edge (``custom.css``: no
sideways scrolling at 1366 px or on a phone). Wrapping is right for code and for messages, but it breaks
the columns of a printed table. So this extension marks the text outputs of notebook cells that *are*
tables, with the class ``odistill-table``; the stylesheet prints those in a smaller font, so that rows of
about 110 characters keep their alignment at 1366 px (wider rows still wrap rather than hide).

A block is a table when it has at least three non-empty lines and at least half of them (and at least two)
contain a run of two or more spaces between non-space characters, the way ``f"{x:>8}"`` columns look.
"""

from __future__ import annotations

import re

from docutils import nodes

TABLE_CLASS = "odistill-table"
_COLUMN_GAP = re.compile(r"\S {2,}\S")


def is_table(text: str) -> bool:
    """Whether a text output looks like a printed table (columns aligned with spaces)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    columnar = sum(bool(_COLUMN_GAP.search(line)) for line in lines)
    return len(lines) >= 3 and columnar >= max(2, len(lines) / 2)


def mark_tables(app, doctree) -> None:
    for block in doctree.findall(nodes.literal_block):
        if "output" in block.get("classes", []) and is_table(block.astext()):
            block["classes"].append(TABLE_CLASS)


def setup(app):
    app.connect("doctree-read", mark_tables)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
