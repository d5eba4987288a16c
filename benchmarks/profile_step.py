"""Where one on-policy step's time goes: sample, teacher score, student forward, loss, backward, optimizer.

The step of ``distill(..., DistillConfig(lmbda=1, beta=1))`` taken apart with odistill's public pieces,
each phase timed on its own (median over steps after one warm-up step)::

    rollouts = odistill.sample(student, tok, prompts, ...)          # sample
    scores = odistill.TeacherScorer(teacher, mode="full")(rollouts)  # score
    logits = odistill.completion_logits(student, rollouts)           # student forward
    loss = odistill.distillation_loss(logits, scores, mask, divergence="reverse_kl")   # loss
    loss.backward()                                                  # backward
    clip_grad_norm_(...); optimizer.step()                           # optimizer

It uses only the public API, so the same script can time an older checkout
(``PYTHONPATH=<old checkout> python benchmarks/profile_step.py``) and show what changed.

    python benchmarks/profile_step.py                    # the 32k-vocabulary case of bench_step.py
    python benchmarks/profile_step.py --case tiny --steps 20
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import base_parser, machine, markdown_table, setup_torch, write_json

PHASES = ("sample", "score", "student forward", "loss", "backward", "optimizer")


def profile(case_name: str, steps: int) -> dict:
    import torch
    from bench_step import CASES, build_case

    import odistill

    case = CASES[case_name]
    student, teacher, tok, dataset, desc = build_case(case)
    prompts = list(dataset["prompt"][: case["batch"]])
    scorer = odistill.TeacherScorer(teacher, mode="full")
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    vocab = len(tok)
    times = {phase: [] for phase in PHASES}
    for step in range(steps + 1):
        marks = [time.perf_counter()]
        rollouts = odistill.sample(
            student, tok, prompts, max_new_tokens=case["max_new_tokens"], temperature=1.0, seed=step
        )
        marks.append(time.perf_counter())
        scores = scorer(rollouts)
        marks.append(time.perf_counter())
        logits = odistill.completion_logits(student, rollouts, vocab_size=vocab)
        marks.append(time.perf_counter())
        loss = odistill.distillation_loss(logits, scores, rollouts.completion_mask, divergence="reverse_kl")
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step == 0:
            continue  # warm-up
        for phase, (a, b) in zip(PHASES, zip(marks[:-1], marks[1:], strict=True), strict=True):
            times[phase].append(b - a)
    medians = {phase: statistics.median(v) for phase, v in times.items()}
    return {
        "case": case_name,
        "models": desc,
        "steps": steps,
        "medians": medians,
        "total": sum(medians.values()),
        "times": times,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", default="vocab32k", help="a case of bench_step.py (tiny, vocab32k, quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; quick 2)")
    args = parser.parse_args(argv)
    setup_torch(args.threads)
    case = "quick" if args.quick else args.case
    steps = args.steps or (2 if args.quick else 5)
    import odistill

    info = machine()
    result = profile(case, steps)
    rows = [
        [phase, f"{result['medians'][phase]:.3f}", f"{result['medians'][phase] / result['total']:.0%}"]
        for phase in PHASES
    ]
    rows.append(["total", f"{result['total']:.3f}", "100%"])
    table = markdown_table(["phase", "seconds (median)", "share"], rows)
    print(
        f"profile_step: case {case} ({result['models']}), {steps} steps, {args.threads} threads, "
        f"odistill from {odistill.__file__}, load {info['load_avg_1_5_15']}",
        file=sys.stderr,
    )
    print(table)
    payload = {
        "benchmark": "profile_step",
        "machine": info,
        "threads": args.threads,
        "odistill": odistill.__file__,
        **result,
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
