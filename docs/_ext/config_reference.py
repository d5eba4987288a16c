"""Sphinx extension: write ``api/config_fields.md`` (every DistillConfig field, by section, and the presets)
from the fields' metadata and :data:`odistill.train.config.PRESETS`.

The help text of a field lives in one place, its ``dataclasses.field`` metadata: this page,
``odistill distill --help`` and ``DistillConfig.describe_fields()`` all read it. The file is only
rewritten when its text changes, so incremental builds stay incremental. The same metadata is appended
to ``DistillConfig``'s docstring in the API reference, so its entry lists every field too.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

PAGE = "api/config_fields.md"


def _cell(value) -> str:
    return f"`{value!r}`".replace("|", "\\|")


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def render() -> str:
    from odistill.train.config import PRESETS, SECTIONS, DistillConfig, field_choices

    lines = [
        "# DistillConfig fields",
        "",
        "Generated from the fields' metadata (the same text as `odistill distill --help`).",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## {section.capitalize()}", "", "| field | default | meaning |", "|---|---|---|"]
        for f in fields(DistillConfig):
            if f.metadata["section"] != section:
                continue
            choices = field_choices(f)
            extra = f" One of {', '.join(f'`{c}`' for c in choices)}." if choices else ""
            lines.append(f"| `{f.name}` | {_cell(_default(f))} | {f.metadata['help']}.{extra} |")
        lines.append("")
    defaults = DistillConfig()
    lines += [
        "## Presets",
        "",
        "`DistillConfig.preset(name, **overrides)`; the fields each preset changes:",
        "",
        "| field | default | " + " | ".join(f"`{name}`" for name in PRESETS) + " |",
        "|---|---|" + "---|" * len(PRESETS),
    ]
    for f in fields(DistillConfig):
        values = [getattr(p, f.name) for p in PRESETS.values()]
        if any(v != getattr(defaults, f.name) for v in values):
            lines.append(
                f"| `{f.name}` | {_cell(getattr(defaults, f.name))} | "
                + " | ".join(_cell(v) for v in values)
                + " |"
            )
    return "\n".join(lines) + "\n"


def _write(app) -> None:
    path = Path(app.srcdir) / PAGE
    text = render()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _rst(text: str) -> str:
    """Help text as plain RST (no accidental emphasis, references or substitutions)."""
    for char in ("\\", "*", "`", "_", "|"):
        text = text.replace(char, "\\" + char)
    return text


def field_lines() -> list[str]:
    """Every DistillConfig field as an RST list: name, default and help, from the fields' metadata."""
    from odistill.train.config import DistillConfig

    lines = [
        "",
        ".. rubric:: Fields",
        "",
        "Every field, its default and its help (the same text as ``odistill distill --help``; grouped by "
        "section, with the presets, in :doc:`config_fields`):",
        "",
    ]
    for f in fields(DistillConfig):
        lines.append(f"* ``{f.name}`` = ``{_default(f)!r}``: {_rst(f.metadata['help'])}")
    return lines + [""]


def _add_fields(app, what, name, obj, options, lines) -> None:
    if what == "class" and name.endswith("DistillConfig"):
        lines.extend(field_lines())


def setup(app):
    app.connect("builder-inited", _write)
    app.connect("autodoc-process-docstring", _add_fields)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
