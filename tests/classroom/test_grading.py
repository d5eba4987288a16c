"""Releasing and autograding the exercises (nbgrader's format): a fresh release scores 0, every reference
solution full marks, a known-wrong answer partial marks with the checker's diagnosis; edited or deleted
test cells are put back from the source before grading."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from odistill.classroom.grading import SOURCE_DIR, TEACHER_ONLY, GradingError, grade, release  # noqa: E402

EXERCISES = sorted(p.name for p in SOURCE_DIR.glob("ex*.ipynb"))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    target = tmp_path_factory.mktemp("student")
    return target, release(target)


def _cells(path):
    return nbformat.read(path, as_version=4).cells


def test_the_release_strips_solutions_hidden_tests_and_outputs(released):
    target, written = released
    assert sorted(p.name for p in written) == EXERCISES
    assert not {p.name for p in written} & set(TEACHER_ONLY)
    for path in written:
        cells = _cells(path)
        text = "\n".join(c.source for c in cells)
        assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text
        assert "raise NotImplementedError()" in text
        assert all(not c.get("outputs") for c in cells if c.cell_type == "code")
        source_tests = [
            c for c in _cells(SOURCE_DIR / path.name) if c.metadata.get("nbgrader", {}).get("grade")
        ]
        kept = [c for c in cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert [c.metadata.nbgrader.grade_id for c in kept] == [
            c.metadata.nbgrader.grade_id for c in source_tests
        ]
    teacher = release(target.parent / "teacher", with_solutions=True)
    assert set(TEACHER_ONLY) <= {p.name for p in teacher}
    assert "BEGIN SOLUTION" in "\n".join(c.source for c in _cells(teacher[0]))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXERCISES)
def test_a_fresh_release_scores_zero_and_the_reference_solution_full_marks(released, name):
    target, _ = released
    fresh = grade(target / name)
    assert fresh["max_score"] > 0 and fresh["score"] == 0
    assert all(not t["passed"] and t["message"] for t in fresh["tests"])
    reference = grade(SOURCE_DIR / name)
    assert reference["score"] == reference["max_score"] == fresh["max_score"]
    assert all(t["passed"] and t["message"] == "" for t in reference["tests"])


def _answer(path: Path, source: str) -> Path:
    nb = nbformat.read(path, as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution"))
    answer.source = source
    nbformat.write(nb, path)
    return path


UNSTABLE_REVERSE_KL = """def my_reverse_kl(student_logits, teacher_logits):
    p_s, p_t = torch.softmax(student_logits, -1), torch.softmax(teacher_logits, -1)
    return (p_s * (torch.log(p_s) - torch.log(p_t))).sum(-1)  # log(softmax): -inf for large logits
"""


@pytest.mark.slow
def test_a_known_wrong_answer_gets_partial_marks_with_the_diagnosis(released, tmp_path):
    target, _ = released
    submission = tmp_path / "ex1_reverse_kl.ipynb"
    submission.write_bytes((target / "ex1_reverse_kl.ipynb").read_bytes())
    report = grade(_answer(submission, UNSTABLE_REVERSE_KL))
    by_name = {t["name"]: t for t in report["tests"]}
    assert by_name["ex1-shape"]["passed"]  # the shape is right ...
    assert (
        not by_name["ex1-check"]["passed"] and not by_name["ex1-hidden"]["passed"]
    )  # ... large logits are not
    assert "log_softmax" in by_name["ex1-check"]["message"]  # the checker's hint reaches the report
    assert 0 < report["score"] < report["max_score"]


@pytest.mark.slow
def test_edited_or_deleted_test_cells_are_restored_before_grading(released, tmp_path):
    target, _ = released
    submission = tmp_path / "ex2_k3_estimator.ipynb"
    nb = nbformat.read(target / "ex2_k3_estimator.ipynb", as_version=4)
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    tests[0].source = "pass  # nothing to see"  # an edited test
    nb.cells.remove(tests[1])  # a deleted one
    nbformat.write(nb, submission)
    report = grade(
        _answer(
            submission, "def my_k3(sampler_logprobs, target_logprobs):\n    return 0 * sampler_logprobs\n"
        )
    )
    assert [t["name"] for t in report["tests"]] == ["ex2-shape", "ex2-check", "ex2-hidden"]
    assert report["tests"][0]["passed"]  # the shape test ran (restored), and the shape is right
    assert not report["tests"][1]["passed"] and report["tests"][1]["message"]  # the restored check caught it
    assert report["max_score"] == 4


def test_grading_a_notebook_that_is_no_exercise_is_a_clear_error(tmp_path):
    stray = tmp_path / "homework.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), stray)
    with pytest.raises(GradingError, match="no source notebook homework.ipynb"):
        grade(stray)


@pytest.mark.slow
def test_the_command_line_prints_the_json_report(released):
    target, _ = released
    cmd = [
        sys.executable,
        "-m",
        "odistill",
        "exercises",
        "grade",
        str(target / "ex4_lambda_schedule.ipynb"),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert set(report) == {"notebook", "score", "max_score", "tests"} and report["score"] == 0
    assert {"name", "points", "max_points", "passed", "message"} <= set(report["tests"][0])
