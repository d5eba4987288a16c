"""``odistill distill``: distil a teacher into a student on a lab-bench task (on- or off-policy).

The options for :class:`~odistill.train.config.DistillConfig` fields are generated from the fields'
metadata (help text, allowed values), so ``--help`` says what the API reference says; the values shown
are those of the ``tiny-cpu`` preset, read from :data:`~odistill.train.config.PRESETS`.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields, replace

from ..bench.experiments import run_distillation
from ..bench.tasks import list_tasks
from ..train.checkpoint import latest_checkpoint
from ..train.config import PRESETS, DistillConfig, field_choices

__all__ = ["add_parser", "run", "PRESET", "config_options", "parse_value"]

#: The preset the command starts from when neither --config nor --resume is given (and no --preset):
#: the sampled estimator has its own, measured lab-bench setting.
PRESET = "tiny-cpu"
SAMPLED_PRESET = "tiny-cpu-sampled"


def config_options() -> list:
    """The DistillConfig fields that are command-line options (``metadata["cli"]``), in declaration order."""
    return [f for f in fields(DistillConfig) if f.metadata.get("cli")]


def run(args) -> int:
    resume = latest_checkpoint(args.resume) if args.resume else None
    if args.config:
        config = DistillConfig.load(args.config)
    elif resume is not None:
        config = DistillConfig.load(resume / "distill_config.json")
    else:
        config = DistillConfig.preset(
            args.preset or (SAMPLED_PRESET if args.estimator == "sampled" else PRESET)
        )
    overrides = {f.name: getattr(args, f.name) for f in config_options() if getattr(args, f.name) is not None}
    overrides["progress"] = not args.json and not args.quiet
    if args.report_to is not None:
        overrides["report_to"] = tuple(name for name in args.report_to.split(",") if name)
    config = replace(config, **overrides)
    result = run_distillation(
        args.task,
        config=config,
        student=args.student,
        teacher=args.teacher,
        threads=args.threads,
        resume_from=resume,
        teacher_url=args.teacher_url,
        teacher_api_key=args.teacher_api_key or os.environ.get("ODISTILL_TEACHER_API_KEY"),
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, sort_keys=True, default=str))
        return 0
    print(
        f"{result['task']}: {result['method']}, {result['steps']} steps in {result['seconds']:.1f} s "
        f"({result['seconds_per_step']:.3f} s/step"
        + (f", {result['threads']} CPU thread(s))" if result.get("threads") else ")")
    )
    print(
        f"  student greedy accuracy  {result['student_accuracy_before']:.3f} -> "
        f"{result['student_accuracy_after']:.3f}   (teacher {_score(result['teacher_accuracy'])})"
    )
    if result["student_sampled_after"] is not None:
        print(
            f"  student sampled (T=1)    {result['student_sampled_before']:.3f} -> "
            f"{result['student_sampled_after']:.3f}   (teacher {_score(result['teacher_sampled'])})"
        )
    return 0


def _score(value) -> str:
    return "not measured: served elsewhere" if value is None else f"{value:.3f}"


def parse_value(annotation: str):
    """A string-to-value converter for a field's annotation (``"int | None"`` accepts ``none``)."""
    base = next((t for t in ("bool", "int", "float", "str") if t in annotation.split(" | ")), "str")
    convert = {"int": int, "float": float, "str": str, "bool": str}[base]
    optional = "None" in annotation

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        return convert(text)

    parse.__name__ = base  # argparse names the type in its error messages
    return parse


def _add_config_option(group, f) -> None:
    preset_value = getattr(PRESETS[PRESET], f.name)
    help_text = f"{f.metadata['help']} ({PRESET} preset: {preset_value!r})"
    flag = "--" + f.name.replace("_", "-")
    if f.type == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    group.add_argument(
        flag,
        type=parse_value(f.type),
        default=None,
        choices=field_choices(f),
        help=help_text,
        metavar=None if field_choices(f) else f.name.upper(),
    )


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distil a teacher into a student on a lab-bench task (on- or off-policy)",
        description="Distil the shipped teacher of a task into its warm-started student (or any models given "
        "by --teacher/--student) and report the student's accuracy before and after. λ (--lmbda) is the "
        "probability that a batch is sampled by the student (1 = on-policy, 0 = off-policy on dataset "
        "answers, or on teacher samples with --seq-kd); β (--beta) picks the divergence: 0 = forward "
        "KL(teacher‖student), 1 = reverse KL(student‖teacher), in between generalized JSD. "
        "--estimator sampled is the Thinking Machines recipe (per-token reverse KL of sampled tokens with "
        f"an importance-sampling loss). Settings start from the '{PRESET}' preset (a few minutes on 2 CPU "
        f"cores; '{SAMPLED_PRESET}' with --estimator sampled), or --preset, --config or the resumed run; "
        "--max-new-tokens defaults to the task's. With "
        "--save-every N --output-dir DIR, checkpoints are written atomically; Ctrl-C saves one before "
        "exiting, and --resume DIR continues to the same numbers as an uninterrupted run.",
    )
    p.add_argument(
        "--task", default="addition", choices=list_tasks(), help="which lab-bench task (default: addition)"
    )
    sections: dict[str, object] = {}
    for f in config_options():
        section = f.metadata["section"]
        if section not in sections:
            sections[section] = p.add_argument_group(f"DistillConfig: {section}")
        _add_config_option(sections[section], f)
    run_group = p.add_argument_group("run")
    run_group.add_argument("--config", default=None, help="a JSON DistillConfig file; options override it")
    run_group.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help=f"start from this DistillConfig preset (default: {PRESET}; {SAMPLED_PRESET} with --estimator "
        "sampled); options override it",
    )
    run_group.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue an interrupted run: its --output-dir (newest checkpoint) or one checkpoint "
        "folder; the saved config is used unless --config is given",
    )
    run_group.add_argument("--student", default=None, help="student name/path/hub id (default: TASK-student)")
    run_group.add_argument("--teacher", default=None, help="teacher name/path/hub id (default: TASK-teacher)")
    run_group.add_argument(
        "--report-to",
        default=None,
        metavar="NAMES",
        help="comma-separated loggers besides the progress bar: jsonl (output_dir/metrics.jsonl), "
        "tensorboard (output_dir/tensorboard), wandb, trackio (accelerate's trackers; offline where there "
        "is no network); with --log-samples-every N they also get a table of sample completions",
    )
    run_group.add_argument(
        "--teacher-url",
        default=None,
        metavar="URL",
        help="score with the teacher served at URL (odistill serve-teacher) instead of --teacher: "
        "the sampled "
        "estimator, or the full one with --teacher-top-k K; vocabulary and tokenizer are checked first",
    )
    run_group.add_argument(
        "--teacher-api-key",
        default=None,
        metavar="KEY",
        help="the API key of --teacher-url (default: $ODISTILL_TEACHER_API_KEY)",
    )
    run_group.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for lab-bench-sized models)",
    )
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    run_group.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (student_accuracy_before/after, teacher_accuracy, steps, seconds, …)",
    )
    p.set_defaults(func=run)
