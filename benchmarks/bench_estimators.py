"""The two estimators of the reverse KL on the lab bench: greedy-accuracy gain, time and teacher output.

From a task's shipped teacher and warm-started student (``odistill.load_model``), on-policy (λ = 1,
reverse KL) distillation runs with

* the **full** estimator and its preset (``DistillConfig.preset("tiny-cpu")``: 64 prompts per step,
  the teacher's whole distribution at every position);
* the **sampled** estimator (Thinking Machines' recipe) and its preset (``"tiny-cpu-sampled"``: 256
  prompts per step, a leave-one-out batch-mean baseline, no gradient clipping; one teacher log-prob per
  token), at the preset's learning rate and at ``--lrs`` (default 5e-4 and 2e-3) to check that it never
  ends below where it started.

Each run's greedy accuracy on ``--n-eval`` held-out prompts is measured before and every ``--eval-every``
steps. Ratios, per seed: *equal steps* = sampled gain / full gain after the same number of optimizer
steps; *equal teacher output* = sampled gain after ``steps`` / full gain after the step at which the full
estimator had received as many teacher numbers (its ``B·T·V`` per step against the sampled ``B·T``),
read from its evaluation curve. Each run is a fresh process.
"""

from __future__ import annotations

import json
import sys

from _common import (
    base_parser,
    emit,
    fmt_stats,
    job_runner,
    machine,
    markdown_table,
    paired_ratios,
    setup_torch,
    stats,
    write_json,
)

DEFAULTS = {"tasks": "addition,sorting", "steps": 150, "eval_every": 10, "n_eval": 300, "seeds": 3}
QUICK = {"tasks": "addition", "steps": 2, "eval_every": 1, "n_eval": 8, "seeds": 1}
PRESET = {"full": "tiny-cpu", "sampled": "tiny-cpu-sampled"}


def worker(job: dict) -> dict:
    import time

    from odistill import DistillConfig, distill
    from odistill.bench.evaluation import evaluate
    from odistill.bench.models import load_model
    from odistill.bench.tasks import get_task

    setup_torch(job["threads"])
    task = get_task(job["task"])
    teacher, tok = load_model(f"{job['task']}-teacher")
    student, _ = load_model(f"{job['task']}-student")
    vocab = teacher.config.vocab_size

    def accuracy(model):
        return evaluate(model, tok, task, n=job["n_eval"], seed=1234)["accuracy"]

    overrides = dict(
        steps=job["steps"],
        eval_every=job["eval_every"],
        max_new_tokens=task.max_new_tokens,
        seed=job["seed"],
        progress=False,
        lmbda=1.0,
        beta=1.0,
    )
    if job["lr"] is not None:
        overrides["lr"] = job["lr"]
    if job["batch"] is not None:
        overrides["batch_size"] = job["batch"]
    if job["estimator"] == "sampled":
        overrides.update(job.get("sampled_overrides") or {})
    config = DistillConfig.preset(PRESET[job["estimator"]], **overrides)
    start = time.perf_counter()
    result = distill(
        student,
        teacher,
        tok,
        task.make_dataset(4000, seed=job["seed"]),
        config,
        eval_fn=lambda model: {"accuracy": accuracy(model)},
    )
    seconds = time.perf_counter() - start
    train_rows = [row for row in result.history if "tokens" in row]
    per_token = vocab if job["estimator"] == "full" else 1  # teacher numbers per completion token
    teacher_numbers = [row["tokens"] * per_token for row in train_rows]
    return {
        "curve": [(row["step"], row["eval/accuracy"]) for row in result.evals()],
        "teacher_numbers_per_step": sum(teacher_numbers) / len(teacher_numbers),
        "teacher_bytes_per_step": 4 * sum(teacher_numbers) / len(teacher_numbers),
        "s_per_step": result.seconds / len(train_rows),
        "seconds": seconds,
        "lr": config.lr,
        "batch": config.batch_size,
    }


def _gain(res: dict, step: int | None = None) -> float | None:
    """Accuracy at ``step`` (the last evaluation at or before it; the end by default) minus at step 0."""
    if "error" in res or not res["curve"]:
        return None
    curve = dict(res["curve"])
    at = max(s for s in curve if step is None or s <= step)
    return curve[at] - curve[0]


def summarise(results: dict, steps: int) -> tuple[str, dict]:
    """The table and, per task, the ratios of a run's ``results`` (task → run name → per-seed results)."""
    rows, summary = [], {}
    for task, runs in results.items():
        full, sampled = runs["full"], runs["sampled"]
        full_gain = [_gain(r) for r in full]
        sampled_gain = [_gain(r) for r in sampled]
        # equal teacher output: the full run's gain at the step where it had received as many numbers
        same_output = []
        for f, s in zip(full, sampled, strict=True):
            if "error" in f or "error" in s:
                same_output.append(None)
                continue
            step = steps * s["teacher_numbers_per_step"] / f["teacher_numbers_per_step"]
            same_output.append(_gain(f, int(step)))
        lowest = {
            name: min((_gain(r) for r in rs if _gain(r) is not None), default=None)
            for name, rs in runs.items()
            if name != "full"
        }
        ok = lambda rs: [r for r in rs if "error" not in r]  # noqa: E731
        summary[task] = {
            "full_gain": stats(full_gain),
            "sampled_gain": stats(sampled_gain),
            "ratio_equal_steps": paired_ratios(sampled_gain, full_gain),
            "ratio_equal_teacher_output": paired_ratios(sampled_gain, same_output),
            "lowest_gain_by_run": lowest,
        }
        rows.append(
            [
                task,
                fmt_stats(summary[task]["full_gain"]),
                fmt_stats(summary[task]["sampled_gain"]),
                fmt_stats(summary[task]["ratio_equal_steps"]),
                fmt_stats(summary[task]["ratio_equal_teacher_output"]),
                ", ".join(
                    f"{name.split('lr ')[-1] if 'lr' in name else 'preset'}: {v:+.3f}"
                    for name, v in lowest.items()
                    if v is not None
                ),
                fmt_stats(stats(r["s_per_step"] for r in ok(full)))
                + " / "
                + fmt_stats(stats(r["s_per_step"] for r in ok(sampled))),
                f"{ok(full)[0]['teacher_bytes_per_step'] / 1e3:.0f} kB / "
                f"{ok(sampled)[0]['teacher_bytes_per_step'] / 1e3:.0f} kB"
                if ok(full) and ok(sampled)
                else "–",
            ]
        )
    table = markdown_table(
        [
            "task",
            "full gain",
            "sampled gain",
            "ratio, equal steps",
            "ratio, equal teacher output",
            "sampled: lowest gain over seeds, by lr",
            "s/step full / sampled",
            "teacher output per step full / sampled",
        ],
        rows,
    )
    return table, summary


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    for name in ("steps", "eval_every", "n_eval", "seeds"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--tasks", default=None, help="comma-separated lab-bench tasks")
    parser.add_argument("--lrs", default="5e-4,2e-3", help="more learning rates for the sampled estimator")
    parser.add_argument("--batch", type=int, default=None, help="override both presets' batch size")
    parser.add_argument(
        "--sampled",
        metavar="JSON",
        default=None,
        help="DistillConfig overrides for the sampled runs, e.g. '{\"num_generations\": 4}'",
    )
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    settings = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for key in ("steps", "eval_every", "n_eval", "seeds", "tasks"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    lrs = [float(x) for x in args.lrs.split(",") if x] if not args.quick else []
    sampled_overrides = json.loads(args.sampled) if args.sampled else {}
    if not isinstance(sampled_overrides, dict):
        parser.error(f"--sampled must be a JSON object of DistillConfig fields, got {args.sampled!r}")
    info = machine()
    print(f"bench_estimators: {settings}, extra lrs {lrs}, load {info['load_avg_1_5_15']}", flush=True)
    run = job_runner(args, __file__, worker)
    results = {}
    for task in settings["tasks"].split(","):
        runs = {"full": [], "sampled": [], **{f"sampled lr {lr:g}": [] for lr in lrs}}
        for seed in range(settings["seeds"]):
            for name in runs:
                estimator = "full" if name == "full" else "sampled"
                lr = None if name in ("full", "sampled") else float(name.split()[-1])
                job = dict(
                    task=task,
                    estimator=estimator,
                    lr=lr,
                    batch=args.batch,
                    sampled_overrides=sampled_overrides,
                    seed=seed,
                    steps=settings["steps"],
                    eval_every=settings["eval_every"],
                    n_eval=settings["n_eval"],
                    threads=args.threads,
                )
                res = run(job)
                runs[name].append(res)
                if "error" in res:
                    print(f"  {task} seed {seed} {name}: ERROR {res['error'][-800:]}", file=sys.stderr)
                else:
                    print(
                        f"  {task} seed {seed} {name:<18} gain {_gain(res):+.3f} "
                        f"({res['curve'][0][1]:.3f} → {res['curve'][-1][1]:.3f}), "
                        f"{res['s_per_step']:.3f} s/step",
                        flush=True,
                    )
        results[task] = runs
    table, summary = summarise(results, settings["steps"])
    print()
    print(table)
    payload = {
        "benchmark": "estimators",
        "settings": settings,
        "lrs": lrs,
        "sampled_overrides": sampled_overrides,
        "machine": info,
        "results": results,
        "summary": summary,
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
