"""Student optimizer steps to reach 95 % of the teacher's accuracy: on-policy vs off-policy.

The lab bench's shipped checkpoints of one task (``odistill.load_model("<task>-teacher")`` and
``"<task>-student"``, a short supervised warm-up) are distilled with ``odistill.distill``:

* **on-policy**: ``lmbda=1`` — the student samples its own completions, the teacher scores them;
* **off-policy**: ``lmbda=0`` — the dataset's reference completions (``seq_kd=True`` with
  ``--off seq_kd``: sequences sampled from the teacher),

with the same divergence (``--beta``, default 1 = reverse KL), batch, learning rate and seed. Every
``--eval-every`` steps the student's greedy accuracy on ``--n-eval`` held-out prompts
(``odistill.bench.evaluation.evaluate``) is compared with the target, 0.95 × the teacher's accuracy on the
same prompts; a run stops at the first evaluation that reaches it (or after ``--max-steps``, then
reported as not reached). Steps are counted, not seconds: the number does not depend on the machine.
Each seed runs in a fresh process; the ratio on/off is taken per seed.
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
    setup_torch,
    stats,
    write_json,
)

DEFAULTS = {
    "task": "sorting",
    "batch": 64,
    "lr": 1e-3,
    "eval_every": 10,
    "n_eval": 300,
    "max_steps": 300,
    "seeds": 3,
    "n_data": 4096,
}
QUICK = {"batch": 8, "eval_every": 1, "n_eval": 16, "max_steps": 2, "seeds": 1, "n_data": 64}
_TEACHER_ACCURACY: dict = {}  # (task, n_eval) -> accuracy, shared by the jobs of one process (--quick)


class _Reached(Exception):
    pass


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
    n_eval = job["n_eval"]
    key = (job["task"], n_eval)
    if key not in _TEACHER_ACCURACY:
        _TEACHER_ACCURACY[key] = evaluate(teacher, tok, task, n=n_eval, seed=1234)["accuracy"]
    teacher_acc = _TEACHER_ACCURACY[key]
    target = 0.95 * teacher_acc
    curve = []

    def eval_fn(model):
        return {"accuracy": evaluate(model, tok, task, n=n_eval, seed=1234)["accuracy"]}

    def callback(row):
        if "eval/accuracy" in row:
            curve.append((row["step"], row["eval/accuracy"]))
            if row["eval/accuracy"] >= target:
                raise _Reached(row["step"])

    off = job["off"]
    config = DistillConfig(
        lmbda=1.0 if job["policy"] == "on" else 0.0,
        seq_kd=job["policy"] == "off" and off == "seq_kd",
        beta=job["beta"],
        batch_size=job["batch"],
        lr=job["lr"],
        steps=job["max_steps"],
        eval_every=job["eval_every"],
        max_new_tokens=task.max_new_tokens,
        device="cpu",
        progress=False,
        seed=job["seed"],
    )
    dataset = task.make_dataset(job["n_data"], seed=job["seed"])
    start = time.perf_counter()
    reached = None
    try:
        distill(student, teacher, tok, dataset, config, eval_fn=eval_fn, callback=callback)
    except _Reached as hit:
        reached = int(hit.args[0])
    return {
        "steps": reached,
        "teacher_accuracy": teacher_acc,
        "target": target,
        "curve": curve,
        "student_start": curve[0][1] if curve else None,
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--task", default=DEFAULTS["task"])
    parser.add_argument(
        "--beta", type=float, default=1.0, help="divergence for both arms (0 fwd KL, 1 rev KL)"
    )
    parser.add_argument(
        "--off", choices=["dataset", "seq_kd"], default="dataset", help="off-policy data source"
    )
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--n-eval", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument(
        "--lr", type=float, default=None, help=f"learning rate, both arms (default {DEFAULTS['lr']})"
    )
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    settings = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for key in ("seeds", "max_steps", "eval_every", "n_eval", "batch", "lr"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["task"] = args.task
    info = machine()
    print(
        f"bench_steps_to_target: {settings}, β={args.beta}, off-policy = {args.off}, "
        f"load {info['load_avg_1_5_15']}",
        flush=True,
    )
    run = job_runner(args, __file__, worker)
    runs = {"on": [], "off": []}
    for seed in range(settings["seeds"]):
        for policy in ("on", "off"):
            job = {
                "task": settings["task"],
                "policy": policy,
                "off": args.off,
                "beta": args.beta,
                "seed": seed,
                "batch": settings["batch"],
                "lr": settings["lr"],
                "eval_every": settings["eval_every"],
                "n_eval": settings["n_eval"],
                "max_steps": settings["max_steps"],
                "n_data": settings["n_data"],
                "threads": args.threads,
            }
            res = run(job)
            runs[policy].append(res)
            if "error" in res:
                print(f"  seed {seed} {policy}: ERROR {res['error'][-800:]}", file=sys.stderr)
            else:
                print(
                    f"  seed {seed} {policy:3s}-policy: steps to {res['target']:.3f} = {res['steps']} "
                    f"(teacher {res['teacher_accuracy']:.3f}, student at start {res['student_start']}, "
                    f"{res['seconds']:.0f} s)",
                    flush=True,
                )
    ok = [
        (a, b) for a, b in zip(runs["on"], runs["off"], strict=True) if "error" not in a and "error" not in b
    ]
    ratios = [a["steps"] / b["steps"] for a, b in ok if a["steps"] and b["steps"]]
    fmt_steps = lambda rs: ", ".join(str(r.get("steps")) if "error" not in r else "error" for r in rs)
    rows = [
        [
            settings["task"],
            f"{args.beta:g}",
            args.off,
            fmt_steps(runs["on"]),
            fmt_steps(runs["off"]),
            fmt_stats(stats(ratios)) if ratios else "–",
        ]
    ]
    table = markdown_table(
        [
            "task",
            "β",
            "off-policy data",
            "on-policy steps (per seed)",
            "off-policy steps (per seed)",
            "ratio on/off",
        ],
        rows,
    )
    print()
    print("steps = optimizer steps until greedy accuracy ≥ 0.95 × teacher's (None: not within max steps)")
    print(table)
    payload = {
        "benchmark": "steps_to_target",
        "settings": settings,
        "beta": args.beta,
        "off": args.off,
        "threads": args.threads,
        "machine": info,
        "runs": runs,
        "ratio_on_over_off": stats(ratios),
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
