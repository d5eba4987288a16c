"""The prose of the notebooks cannot drift from their outputs, and the docs cite only files that exist.

1. Every decimal number typed in a notebook's markdown (a measurement, e.g. "0.630" or "1.1×") must
   appear in that notebook's outputs or code, to the digits it is written with (0.63 is backed by
   0.6302; 63 % by 0.63 only when written with a percent sign). Re-executing a notebook whose results
   changed therefore fails here, naming the number, until the text says what the outputs say. Numbers
   inside ``$…$`` formulas are mathematics, not measurements, and are skipped.
2. A repository path written in backticks (``benchmarks/results/step.json``, ``docs/faq.md``, …) in a
   notebook, the README or a docs page names a file or folder that is in the repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted(
    (ROOT / "notebooks" / "exercises").glob("*.ipynb")
)
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w.])")
PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s?%")
FORMULA = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$", re.S)
PATH = re.compile(r"`((?:benchmarks|docs|notebooks|odistill|scripts|tests)/[^`\s:]*[^`\s:./,;)])")
#: Paths written by a build or a run, not committed.
GENERATED = ("docs/_build", "docs/notebooks", "docs/cli.md", "docs/exercises.md", "odistill_demo")


def _text(source) -> str:
    return source if isinstance(source, str) else "".join(source)


def backing_text(nb: dict) -> str:
    """Everything a notebook computed or typed in code: sources, streams, text and JSON outputs."""
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts.append(_text(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append(_text(out.get("text", "")))
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/") or kind == "application/json":
                    parts.append(
                        value
                        if isinstance(value, str)
                        else _text(value)
                        if isinstance(value, list)
                        else json.dumps(value)
                    )
    return "\n".join(parts)


def is_backed(typed: str, values: list[float], percent: bool = False) -> bool:
    """``typed`` (as written) is some value rounded to its digits (with ``percent``: or some value × 100)."""
    digits = len(typed.split(".")[1]) if "." in typed else 0
    target = float(typed)
    for v in values:
        for candidate in (v, v * 100) if percent else (v,):
            if abs(round(candidate, digits) - target) < 1e-9 or abs(candidate - target) < 1e-12:
                return True
    return False


def unbacked_numbers(nb: dict) -> list[str]:
    blob = backing_text(nb)
    values = [float(x) for x in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?", blob.replace(",", ""))]
    bad = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        text = FORMULA.sub(" ", _text(cell["source"]))
        percents = set(PERCENT.findall(text))
        for typed in NUMBER.findall(text):
            if not is_backed(typed, values, percent=typed in percents):
                bad.append(typed)
        for typed in percents - set(NUMBER.findall(text)):
            if not is_backed(typed, values, percent=True) and not is_backed(typed, values):
                bad.append(f"{typed} %")
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_number_in_the_prose_comes_from_an_output(path):
    bad = unbacked_numbers(json.loads(path.read_text()))
    assert not bad, (
        f"{path.relative_to(ROOT)}: numbers in the markdown that no output or code of the notebook shows: "
        f"{bad}. Re-executed results changed: make the text say what the outputs say (or print the number)."
    )


def test_the_prose_check_catches_a_drifted_number():
    nb = {
        "cells": [
            {"cell_type": "code", "source": "print(acc)", "outputs": [{"text": "accuracy 0.6302, 12.5 s\n"}]},
            {
                "cell_type": "markdown",
                "source": "The student reached 0.63 (not 0.71) in 12.5 s, $x^{0.5}$; 63 % of it.",
            },
        ]
    }
    assert unbacked_numbers(nb) == ["0.71"]


def _documents():
    docs = sorted(
        p for p in (ROOT / "docs").rglob("*.md") if not str(p.relative_to(ROOT)).startswith(GENERATED)
    )
    return [
        ROOT / "README.md",
        ROOT / "notebooks" / "README.md",
        ROOT / "benchmarks" / "README.md",
        *docs,
        *NOTEBOOKS,
    ]


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_repository_paths_exist(path):
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        text = "\n".join(_text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    missing = [
        p
        for p in PATH.findall(text)
        if not p.startswith(GENERATED) and not set("*<{") & set(p) and not (ROOT / p).exists()
    ]
    assert not missing, f"{path.relative_to(ROOT)} cites files that are not in the repository: {missing}"
