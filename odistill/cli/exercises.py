"""``odistill exercises``: release the exercise notebooks to learners, and autograde their submissions."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]


def run(args) -> int:
    from ..classroom.grading import GradingError, format_report, grade, release

    try:
        if args.action == "release":
            written = release(args.target, source=args.source, with_solutions=args.with_solutions)
            kind = (
                "teacher's versions (with solutions and hidden tests)"
                if args.with_solutions
                else "student versions"
            )
            print(f"wrote {len(written)} notebooks ({kind}) to {args.target}:")
            for path in written:
                print(f"  {path.name}")
            return 0
        reports = [grade(path, source=args.source, timeout=args.timeout) for path in args.notebooks]
    except GradingError as error:
        print(f"odistill exercises: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=1))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "exercises",
        help="release the exercise notebooks, or autograde submissions",
        description="The exercises (notebooks/exercises/) are nbgrader source notebooks: solution cells with "
        "### BEGIN/END SOLUTION, autograded test cells with points, hidden tests. `release` writes the "
        "learners' versions (or the teacher's with --with-solutions); `grade` scores submissions the way "
        "nbgrader autograde does (test cells restored from the source, hidden ones included, then the "
        "notebook is executed). Needs the classroom extra: pip install 'odistill[classroom]'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="{release,grade}")
    r = actions.add_parser("release", help="write the exercise notebooks for learners (or for the teacher)")
    r.add_argument("target", help="folder to write the notebooks to")
    r.add_argument("--with-solutions", action="store_true", help="the teacher's versions: solutions kept")
    g = actions.add_parser("grade", help="autograde submitted notebooks")
    g.add_argument("notebooks", nargs="+", help="submitted notebooks (each keeps its exercise's file name)")
    g.add_argument(
        "--json",
        action="store_true",
        help='print {"score", "max_score", "tests": [...]} (a list for several)',
    )
    g.add_argument("--timeout", type=int, default=600, help="seconds allowed to each cell")
    for sub in (r, g):
        sub.add_argument(
            "--source", default=None, help="folder of source notebooks (default: notebooks/exercises)"
        )
    p.set_defaults(func=run)
