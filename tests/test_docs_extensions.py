"""The docs site's own Sphinx extensions (``docs/_ext/``), as functions: no site build needed.

The built site is checked in ``tests/test_docs.py``; this file checks the pieces on inputs whose answer
is known, including the teacher's and the learners' mirrors of the notebooks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import notebook_links  # noqa: E402
import output_blocks  # noqa: E402


def test_printed_tables_are_told_from_messages():
    table = "β     λ   greedy\n0     0   0.875\n0.5   0   0.903\n1     1   0.930\n"
    assert output_blocks.is_table(table)
    assert output_blocks.is_table(
        "a header sentence, then rows\nname   value\nfull   0.214\nsampled   0.667\n"
    )
    assert not output_blocks.is_table("one line  with  gaps")  # fewer than three lines
    assert not output_blocks.is_table("step 1: loss 4.2584\nstep 2: loss 4.1000\nstep 3: loss 3.9000\n")
    message = "odistill 0.1.0 | torch 2.13 | device cpu\nthe teacher's machine: odistill serve-teacher\nok\n"
    assert not output_blocks.is_table(message)


def test_the_notebook_links_follow_colab_and_github_patterns():
    repo = "https://github.com/someone/odistill"
    links = dict(notebook_links.links("01_forward_vs_reverse_kl.ipynb", repo, "main"))
    assert links == {
        "Download 01_forward_vs_reverse_kl.ipynb": "01_forward_vs_reverse_kl.ipynb",
        "Open in Colab": "https://colab.research.google.com/github/someone/odistill/blob/main/notebooks/"
        "01_forward_vs_reverse_kl.ipynb",
        "Source on GitHub": f"{repo}/blob/main/notebooks/01_forward_vs_reverse_kl.ipynb",
    }
    # an exercise: the download (the learner's version) only; the repository holds the solutions
    assert notebook_links.links("exercises/ex1_reverse_kl.ipynb", repo, "dev") == [
        ("Download ex1_reverse_kl.ipynb", "ex1_reverse_kl.ipynb")
    ]


def test_the_repository_url_is_read_from_pyproject_and_checked(tmp_path):
    assert notebook_links.repository_url(ROOT / "pyproject.toml").startswith("https://github.com/")
    bad = tmp_path / "pyproject.toml"
    for urls in ('Repository = "https://gitlab.com/a/b"', 'Homepage = "https://github.com/a/b"'):
        bad.write_text(f'[project]\nname = "x"\n[project.urls]\n{urls}\n')
        with pytest.raises(ValueError, match=r"\[project.urls\] Repository must be https://github.com/"):
            notebook_links.repository_url(bad)


def test_the_learners_mirror_leaves_the_solutions_out_and_the_teachers_keeps_them(tmp_path):
    pytest.importorskip("nbgrader", reason="the learners' versions are made by nbgrader (classroom extra)")
    import notebook_sync

    from odistill.classroom.grading import TEACHER_ONLY

    source = ROOT / "notebooks"
    learners, teachers = tmp_path / "learners", tmp_path / "teachers"
    notebook_sync.sync(source, learners, teacher=False)
    notebook_sync.sync(source, teachers, teacher=True)
    exercises = sorted(p.name for p in (source / "exercises").glob("*.ipynb"))
    assert set(TEACHER_ONLY) <= set(exercises)
    assert sorted(p.name for p in (teachers / "exercises").glob("*.ipynb")) == exercises
    assert sorted(p.name for p in (learners / "exercises").glob("*.ipynb")) == sorted(
        set(exercises) - set(TEACHER_ONLY)
    )
    for path in (learners / "exercises").glob("*.ipynb"):
        text = path.read_text(encoding="utf-8")
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text, path.name
    for path in source.glob("0*.ipynb"):  # the main notebooks are copied as they are, for both
        assert (learners / path.name).read_bytes() == path.read_bytes() == (teachers / path.name).read_bytes()
    assert "BEGIN SOLUTION" in (teachers / "exercises" / "ex1_reverse_kl.ipynb").read_text(encoding="utf-8")
