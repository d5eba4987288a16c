"""The ``odistill`` command. Run ``odistill --help``, or ``odistill COMMAND --help`` for one command.

Each subcommand is one module of this package with two functions: ``add_parser(subparsers)`` registers
its arguments and ``run(args) -> int`` carries it out. Add a command by writing such a module and
listing it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..core.remote import TeacherUnavailableError
from . import demo, distill, exercises, serve_teacher, sweep, train_teacher
from . import eval as eval_command

__all__ = ["main", "build_parser", "COMMANDS"]

DESCRIPTION = """\
odistill — on-policy distillation of language models, on a laptop CPU.

The lab bench: synthetic tasks with checkable answers (addition, permutations, sorting), tiny
Llama-style models, and, for each task, a trained teacher and a warm-started student shipped inside
the package ("addition-teacher", "addition-student", …).

  odistill demo                                    off-policy vs on-policy distillation, side by side
  odistill distill --task addition --lmbda 1 --beta 1 --json
  odistill sweep --task sorting --grid beta=0,1 --grid lmbda=0,1 --seeds 3 --target 0.9
  odistill eval --task addition                    how good is the shipped teacher?
  odistill eval --task addition --model addition-student --json
  odistill serve-teacher --model addition-teacher --port 8000        a teacher other machines score with
  odistill distill --task addition --estimator sampled --teacher-url http://127.0.0.1:8000
  odistill train-teacher --task addition --out runs/my-teacher
  odistill train-teacher --task addition --out runs/my-student --student
"""

#: The subcommands, in the order ``odistill --help`` lists them.
COMMANDS = (demo, distill, sweep, serve_teacher, train_teacher, eval_command, exercises)


def build_parser() -> argparse.ArgumentParser:
    """The ``odistill`` argument parser with every subcommand (the CLI reference page is built from it)."""
    parser = argparse.ArgumentParser(
        prog="odistill", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


@contextlib.contextmanager
def _quiet_libraries(quiet: bool):
    """With ``--quiet`` / ``--json``: no progress bars or info messages from transformers and datasets either
    (e.g. "Loading checkpoint shards" of a sharded hub model); warnings and errors still show."""
    if not quiet:
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    datasets_bars = datasets.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``odistill`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        with _quiet_libraries(getattr(args, "quiet", False) or getattr(args, "json", False)):
            return args.func(args)
    except (FileNotFoundError, ValueError, TeacherUnavailableError) as error:  # say what, not a traceback
        print(f"odistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # distill has saved a checkpoint if it had an output_dir
        print(f"odistill {args.command}: interrupted", file=sys.stderr)
        return 130
