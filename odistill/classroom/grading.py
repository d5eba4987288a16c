"""Release and autograde the exercise notebooks, in nbgrader's format.

The exercises in ``notebooks/exercises/`` are written once, as nbgrader *source* notebooks (the Jupyter
project's grading tool, https://nbgrader.readthedocs.io):

* the learner's answer is a **solution cell** (``metadata.nbgrader.solution``) whose reference
  solution sits between ``### BEGIN SOLUTION`` and ``### END SOLUTION``;
* each check is a locked **autograded test cell** (``metadata.nbgrader.grade`` with ``points``): it
  earns its points when it runs without an error. The checkers of :mod:`odistill.classroom.exercises`
  raise an ``ExerciseError`` that says what looks wrong, so a failed test shows a diagnosis, not just
  "wrong";
* checks only the teacher sees sit between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``.

:func:`release` writes what the learners get (solutions replaced by ``raise NotImplementedError()``,
hidden tests removed, outputs cleared) or, with ``with_solutions=True``, the teacher's version.
:func:`grade` scores one submission the way ``nbgrader autograde`` does: the test cells are first put
back as the source has them (hidden tests included: a learner who edited or deleted a test cell gains
nothing), the notebook is executed top to bottom, and each test cell scores with nbgrader's own rule
(``nbgrader.utils.determine_grade``). A course that uses nbgrader itself can take the source notebooks
as they are. From the command line::

    odistill exercises release student/                    # the learners' notebooks
    odistill exercises release teacher/ --with-solutions   # the teacher's
    odistill exercises grade submissions/*/ex1_reverse_kl.ipynb --json
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

__all__ = ["SOURCE_DIR", "GradingError", "release", "release_notebook", "grade", "source_for"]

#: The exercise sources, when odistill runs from its repository (an editable install or a checkout).
SOURCE_DIR = Path(__file__).resolve().parents[2] / "notebooks" / "exercises"
#: Teacher-only material, never in a student release: ``solutions.ipynb`` answers the exercise notebooks'
#: follow-up questions, ``notebook_exercise_solutions.ipynb`` the exercises at the end of notebooks 01–07.
TEACHER_ONLY = ("solutions.ipynb", "notebook_exercise_solutions.ipynb")


class GradingError(RuntimeError):
    """The grading tool is missing, or a notebook is not an exercise it can grade."""


def _nbformat():
    import nbformat

    return nbformat


def _preprocessors():
    try:
        from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions
    except ImportError as error:
        raise GradingError(
            f"releasing and grading exercises needs nbgrader ({error}): pip install 'odistill[classroom]'"
        ) from None
    return ClearSolutions, ClearHiddenTests, ClearOutput


def _nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def _is_test(cell) -> bool:
    meta = _nbgrader(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def release_notebook(notebook, *, with_solutions: bool = False):
    """The learner's version of a source notebook (a copy; the argument is left as it is)."""
    clear_solutions, clear_hidden, clear_output = _preprocessors()
    nb = copy.deepcopy(notebook)
    if with_solutions:
        return nb
    resources: dict = {}
    nb, resources = clear_solutions().preprocess(nb, resources)
    nb, resources = clear_hidden().preprocess(nb, resources)
    nb, resources = clear_output().preprocess(nb, resources)
    return nb


def release(
    target: str | Path, *, source: str | Path | None = None, with_solutions: bool = False
) -> list[Path]:
    """Write the exercise notebooks of ``source`` (default :data:`SOURCE_DIR`) to ``target``: the learners'
    versions, or the teacher's with ``with_solutions`` (solutions, hidden tests and the
    :data:`TEACHER_ONLY` notebooks kept). Returns the written paths."""
    nbformat = _nbformat()
    source = Path(source) if source is not None else SOURCE_DIR
    if not source.is_dir():
        raise GradingError(
            f"no exercise sources in {source}: pass --source DIR (the repository's notebooks/exercises)"
        )
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(source.glob("*.ipynb")):
        if path.name in TEACHER_ONLY and not with_solutions:
            continue
        nb = nbformat.read(path, as_version=4)
        nbformat.write(release_notebook(nb, with_solutions=with_solutions), target / path.name)
        written.append(target / path.name)
    if not written:
        raise GradingError(f"no exercise notebooks (*.ipynb) in {source}")
    return written


def source_for(submission: str | Path, source: str | Path | None = None) -> Path:
    """The source notebook a submission is graded against: the one of the same file name."""
    folder = Path(source) if source is not None else SOURCE_DIR
    path = folder / Path(submission).name
    if not path.is_file():
        raise GradingError(
            f"no source notebook {path.name} in {folder}: a submission keeps the exercise's file name "
            "(pass --source DIR for another folder of sources)"
        )
    return path


def _restore_tests(submission, source):
    """The submission with every test cell as the source has it (matched by grade_id; missing ones are
    put back after the cell that precedes them in the source)."""
    by_id = {_nbgrader(c).get("grade_id"): c for c in source.cells if _is_test(c)}
    if not by_id:
        raise GradingError("the source notebook has no autograded test cells (metadata.nbgrader.grade)")
    kept, seen = [], set()
    for cell in submission.cells:
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in by_id:
            kept.append(copy.deepcopy(by_id[grade_id]))
            seen.add(grade_id)
        elif not _is_test(cell):
            kept.append(cell)
    for index, cell in enumerate(source.cells):  # deleted test cells come back in their place
        grade_id = _nbgrader(cell).get("grade_id")
        if _is_test(cell) and grade_id not in seen:
            before = _nbgrader(source.cells[index - 1]).get("grade_id") if index else None
            position = next(
                (i + 1 for i, c in enumerate(kept) if before and _nbgrader(c).get("grade_id") == before),
                len(kept),
            )
            kept.insert(position, copy.deepcopy(cell))
            seen.add(grade_id)
    submission.cells = kept
    return submission


def _error_text(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename')}: {output.get('evalue')}"
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            return "wrote to stderr: " + "".join(output.get("text", ""))[-300:]
    return ""


def grade(
    submission: str | Path, *, source: str | Path | None = None, timeout: int = 600, kernel: str = "python3"
) -> dict:
    """Autograde one submitted notebook; returns ``{"notebook", "score", "max_score", "tests": [...]}``,
    each test ``{"name", "points", "max_points", "passed", "message"}`` (the message: the error the
    test raised, e.g. the checker's diagnosis; empty when it passed)."""
    nbformat = _nbformat()
    from nbclient import NotebookClient
    from nbgrader.utils import determine_grade

    _preprocessors()  # a clear error when nbgrader is missing
    submission = Path(submission)
    source_path = source_for(submission, source)
    nb = _restore_tests(nbformat.read(submission, as_version=4), nbformat.read(source_path, as_version=4))
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=kernel,
        allow_errors=True,
        resources={"metadata": {"path": str(submission.parent)}},
    )
    client.execute()
    tests = []
    for cell in nb.cells:
        if not _is_test(cell):
            continue
        points, max_points = determine_grade(cell)
        points = float(points or 0.0)
        tests.append(
            {
                "name": _nbgrader(cell)["grade_id"],
                "points": points,
                "max_points": float(max_points),
                "passed": points == max_points,
                "message": _error_text(cell),
            }
        )
    return {
        "notebook": str(submission),
        "score": sum(t["points"] for t in tests),
        "max_score": sum(t["max_points"] for t in tests),
        "tests": tests,
    }


def format_report(report: dict) -> str:
    """A grade report for a terminal: one line per test, then the total."""
    lines = [report["notebook"]]
    for t in report["tests"]:
        mark = "ok  " if t["passed"] else "FAIL"
        line = f"  {mark} {t['name']:<28} {t['points']:g}/{t['max_points']:g}"
        lines.append(line + (f"   {t['message']}" if t["message"] else ""))
    lines.append(f"  score {report['score']:g} / {report['max_score']:g}")
    return "\n".join(lines)


def to_json(report) -> str:
    return json.dumps(report, indent=1)
