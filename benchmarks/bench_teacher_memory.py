"""Teacher scoring memory: ``TeacherScorer`` in ``full`` vs ``topk`` vs ``sampled`` mode.

A small random-init Qwen2 teacher (2 × 128) with a 32 000-token vocabulary scores one rollout batch of
B sequences with T completion tokens. For each mode (each in a fresh process) we record

* peak memory above the inputs (RSS high-water mark during ``scorer(rollouts)`` − RSS before), and
* the size of what the scorer returns (the scores that live on until the loss is computed), and
* the time of the call.

The workers run with ``MALLOC_MMAP_THRESHOLD_=65536`` (see ``_common.py``), so that every repeat's
temporaries count, not only the first one's.

``sampled`` runs with ``micro_batch_size=1`` (so the teacher's logits exist for one row at a time:
O(T·V) transient, O(B·T) kept); ``full`` and ``topk`` score the batch in one pass (their default).
The point of the table: what a remote log-prob server returning only the sampled tokens' log-probs
saves, as ratios to ``full``.
"""

from __future__ import annotations

import json
import sys

from _common import (
    PeakMemory,
    base_parser,
    emit,
    fmt_bytes,
    fmt_stats,
    job_runner,
    machine,
    markdown_table,
    setup_torch,
    stats,
    write_json,
)

SIZES = {"default": {"B": 16, "P": 16, "T": 128, "V": 32000}, "quick": {"B": 2, "P": 4, "T": 8, "V": 512}}
MODES = [("full", {}), ("topk", {"k": 20}), ("sampled", {"micro_batch_size": 1})]
#: every block of 64 kB or more is its own mapping, returned to the OS when freed: the RSS peak of each
#: repeat then counts all of that repeat's large temporaries, even those a warm-up had already touched
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def worker(job: dict) -> dict:
    import time

    import torch

    from odistill.bench.models import build_model
    from odistill.core.rollouts import Rollouts
    from odistill.core.teacher import TeacherScorer

    setup_torch(job["threads"])
    size = job["size"]
    teacher = build_model(
        {"layers": 2, "hidden": 128, "heads": 4, "mlp": 512},
        vocab_size=size["V"],
        seed=0,
        arch="qwen2",
        max_positions=size["P"] + size["T"] + 8,
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, size["V"], (size["B"], size["P"] + size["T"]), generator=g)
    rollouts = Rollouts(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        completion_mask=torch.ones(size["B"], size["T"], dtype=torch.bool),
        prompt_width=size["P"],
    )
    scorer = TeacherScorer(teacher, mode=job["mode"], **job["kwargs"])
    scorer(rollouts)  # warm-up
    times, peaks, kept = [], [], None
    for _ in range(job["repeats"]):
        with PeakMemory() as mem:
            start = time.perf_counter()
            scores = scorer(rollouts)
            times.append(time.perf_counter() - start)
        peaks.append(mem.above)
        kept = sum(
            t.numel() * t.element_size()
            for t in (
                scores.token_logprobs,
                scores.logprobs,
                scores.topk_logprobs,
                scores.topk_ids,
                scores.topk_tail_logprob,
            )
            if t is not None
        )
        del scores
    return {"times": times, "peaks": peaks, "kept_bytes": kept, "hwm_reset": mem.reset}


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    size = SIZES["quick" if args.quick else "default"]
    repeats = args.repeats or (2 if args.quick else 3)
    info = machine()
    print(
        f"bench_teacher_memory: (B, P, T, V) = {tuple(size.values())}, {repeats} repeats, "
        f"load {info['load_avg_1_5_15']}",
        flush=True,
    )
    run = job_runner(args, __file__, worker)
    results = {}
    for mode, kwargs in MODES:
        res = run(
            {"mode": mode, "kwargs": kwargs, "size": size, "repeats": repeats, "threads": args.threads},
            env=MALLOC_ENV,
        )
        results[mode] = res
        if "error" in res:
            print(f"  {mode}: ERROR {res['error'][-800:]}", file=sys.stderr)
        else:
            print(
                f"  {mode:8s} peak {fmt_bytes(stats(res['peaks'])['median'])}, "
                f"kept {fmt_bytes(res['kept_bytes'])}, time {fmt_stats(stats(res['times']), unit=' s')}",
                flush=True,
            )
    full = results.get("full", {})
    rows = []
    for mode, kwargs in MODES:
        res = results[mode]
        if "error" in res or "error" in full:
            rows.append([mode, str(kwargs or ""), "error", "", "", "", ""])
            continue
        peak_ratio = stats([a / b for a, b in zip(res["peaks"], full["peaks"], strict=False) if b])
        res["peak_ratio_vs_full"] = peak_ratio
        res["kept_ratio_vs_full"] = res["kept_bytes"] / full["kept_bytes"]
        rows.append(
            [
                mode,
                ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "–",
                fmt_bytes(stats(res["peaks"])["median"]),
                fmt_stats(peak_ratio),
                fmt_bytes(res["kept_bytes"]),
                f"{res['kept_ratio_vs_full']:.2g}",
                fmt_stats(stats(res["times"])),
            ]
        )
    table = markdown_table(
        [
            "mode",
            "options",
            "peak above inputs",
            "peak ratio vs full",
            "scores kept",
            "kept ratio vs full",
            "time s",
        ],
        rows,
    )
    print()
    print(table)
    payload = {
        "benchmark": "teacher_memory",
        "size": size,
        "repeats": repeats,
        "threads": args.threads,
        "machine": info,
        "results": results,
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
