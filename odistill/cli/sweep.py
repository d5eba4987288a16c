"""``odistill sweep``: a grid of DistillConfig settings × seeds on a lab-bench task, with intervals."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from ..bench.sweep import run_sweep
from ..bench.tasks import list_tasks
from ..train.config import PRESETS, ConfigError, DistillConfig
from .distill import parse_value

__all__ = ["add_parser", "run", "parse_assignment"]


def parse_assignment(text: str, *, many: bool) -> tuple[str, list | object]:
    """``"beta=0,0.5,1"`` → ``("beta", [0.0, 0.5, 1.0])`` (``many``), ``"steps=150"`` → ``("steps", 150)``:
    the values converted to the DistillConfig field's type."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or not name or not values.strip():
        raise ValueError(f"expected NAME=VALUE{'[,VALUE…]' if many else ''}, got {text!r}")
    by_name = {f.name: f for f in fields(DistillConfig)}
    if name not in by_name:
        raise ValueError(f"{name!r} is not a DistillConfig field; fields: {sorted(by_name)}")
    parse = parse_value(str(by_name[name].type))
    if str(by_name[name].type) == "bool":
        parse = _parse_bool
    try:
        parsed = [parse(v.strip()) for v in values.split(",")] if many else parse(values.strip())
    except ValueError as error:
        raise ValueError(f"cannot read {text!r} as {by_name[name].type}: {error}") from error
    return name, parsed


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def run(args) -> int:
    grid = dict(parse_assignment(text, many=True) for text in args.grid)
    overrides = dict(parse_assignment(text, many=False) for text in args.set)
    for name in ("steps", "eval_every"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if not grid:
        raise ValueError("give at least one --grid NAME=V1,V2,… (a DistillConfig field and its values)")
    try:
        sweep = run_sweep(
            args.task,
            grid=grid,
            base=args.preset,
            seeds=args.seeds,
            eval_n=args.eval_n,
            target=args.target,
            workers=args.workers,
            threads=args.threads,
            progress=not args.json and not args.quiet,
            **overrides,
        )
    except ConfigError as error:
        raise ValueError(str(error)) from error
    if args.out_json:
        sweep.to_json(args.out_json)
    if args.csv:
        sweep.to_csv(args.csv)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
        sweep.plot(axes[0], x="step")
        sweep.plot(axes[1], x="seconds")
        fig.savefig(args.plot, dpi=100)
    if args.json:
        print(json.dumps({"task": sweep.task, "summary": sweep.summary()}, sort_keys=True, default=str))
        return 0
    print()
    print(sweep.table())
    written = [p for p in (args.out_json, args.csv, args.plot) if p]
    if written:
        print("wrote " + ", ".join(written))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="a grid of settings × seeds on a lab-bench task: curves, steps/seconds to a target, 95 %% CIs",
        description="Run every combination of the --grid values (DistillConfig fields) with every seed on a "
        "lab-bench task, from its shipped teacher and warm-started student; evaluate greedy accuracy every "
        "--eval-every steps; print, per combination, the final accuracy and the steps and training seconds "
        "to --target, each as a mean with its 95 % confidence interval over seeds. Each run is "
        "deterministic in its seed; --workers N runs N at a time in fresh processes of --threads threads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default="addition", choices=list_tasks(), help="which lab-bench task")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a DistillConfig field and its values (repeat for a grid), e.g. --grid beta=0,0.5,1",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a DistillConfig field fixed for every run (repeatable), e.g. --set lr=5e-4",
    )
    p.add_argument("--preset", default="tiny-cpu", choices=sorted(PRESETS), help="the base config")
    p.add_argument("--seeds", type=int, default=3, help="seeds per combination (0, 1, …)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the preset's)")
    p.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (preset's)")
    p.add_argument("--eval-n", type=int, default=200, help="held-out prompts per evaluation")
    p.add_argument("--target", type=float, default=None, help="an accuracy: report steps/seconds to reach it")
    p.add_argument("--workers", type=int, default=1, help="runs at a time, each in a fresh process")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--out-json", default=None, metavar="PATH", help="write every run and curve as JSON")
    p.add_argument(
        "--csv", default=None, metavar="PATH", help="write the tidy table (one row per evaluation)"
    )
    p.add_argument("--plot", default=None, metavar="PATH", help="save the curves against steps and seconds")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--quiet", action="store_true", help="no per-run lines")
    p.set_defaults(func=run)
