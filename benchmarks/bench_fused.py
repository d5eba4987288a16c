"""LM head + divergence, forward + backward: fused (logits never built) vs logits-then-loss (odistill, TRL).

What a distillation loss really costs starts at the last hidden states, not at the logits: the
student's ``(B, T, V)`` logits (and their gradient) and the teacher's logits are the largest tensors
of the step. Three ways to compute ``JSD(β)(h_S W_Sᵀ, h_T W_Tᵀ)`` and its gradient with respect to the
student's hidden states and LM-head weight:

* ``trl``: ``logits = h @ Wᵀ`` for both models, then ``GKDTrainer.generalized_jsd_loss``;
* ``odistill``: the same logits, then ``odistill.generalized_jsd`` (chunked path);
* ``odistill_fused``: ``odistill.core.fused.fused_linear_divergence`` — logits, softmaxes and logit
  gradients exist one chunk of rows at a time; the gradient goes straight on to ``h_S`` and ``W_S``.

Shapes are those of a Qwen2.5-0.5B student (hidden 896, V = 151,936) and a wider teacher (hidden
1536, same vocabulary), float32 on CPU. Inputs (hidden states and both weights) are built before the
measurement; peak memory above them includes the gradient of ``W_S`` (545 MB at these sizes), which
every implementation must produce. Each implementation runs in its own fresh process.

Usage::

    python benchmarks/bench_fused.py               # (2, 512) tokens, H 896/1536, V 151936
    python benchmarks/bench_fused.py --size modest # (1, 128) tokens: run_all's size
    python benchmarks/bench_fused.py --quick       # tiny smoke run
"""

from __future__ import annotations

import json
import sys

from _common import (
    TRL_MISSING,
    PeakMemory,
    base_parser,
    emit,
    fmt_bytes,
    fmt_stats,
    have_trl,
    job_runner,
    machine,
    markdown_table,
    paired_ratios,
    setup_torch,
    stats,
    write_json,
)

SIZES = {
    "target": {"batch": 2, "tokens": 512, "student_hidden": 896, "teacher_hidden": 1536, "vocab": 151936},
    "modest": {"batch": 1, "tokens": 128, "student_hidden": 896, "teacher_hidden": 1536, "vocab": 151936},
    "quick": {"batch": 2, "tokens": 8, "student_hidden": 16, "teacher_hidden": 24, "vocab": 500},
}
BETAS = (0.5, 1.0)
IMPLS = ("odistill_fused", "odistill", "trl")


def _inputs(size: dict, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    b, t, v = size["batch"], size["tokens"], size["vocab"]
    hs = torch.randn(b, t, size["student_hidden"], generator=g).requires_grad_(True)
    ws = (
        torch.randn(v, size["student_hidden"], generator=g) * size["student_hidden"] ** -0.5
    ).requires_grad_(True)
    ht = torch.randn(b, t, size["teacher_hidden"], generator=g)
    wt = torch.randn(v, size["teacher_hidden"], generator=g) * (2 * size["teacher_hidden"] ** -0.5)
    mask = torch.ones(b, t, dtype=torch.bool)
    return hs, ws, ht, wt, mask


def _loss_fn(impl: str):
    import torch

    if impl == "odistill_fused":
        from odistill.core.fused import fused_linear_divergence

        return lambda hs, ws, ht, wt, mask, beta: fused_linear_divergence(
            "jsd", hs, ws, ht, wt, mask, weight=beta
        )
    if impl == "odistill":
        from odistill import generalized_jsd

        def odistill_loss(hs, ws, ht, wt, mask, beta):
            with torch.no_grad():
                teacher = ht @ wt.T
            return generalized_jsd(hs @ ws.T, teacher, mask, beta=beta)

        return odistill_loss
    from trl.experimental.gkd import GKDTrainer

    def trl_loss(hs, ws, ht, wt, mask, beta):
        with torch.no_grad():
            teacher = ht @ wt.T
        return GKDTrainer.generalized_jsd_loss(
            hs @ ws.T, teacher, labels=torch.where(mask, 0, -100), beta=beta
        )

    return trl_loss


def worker(job: dict) -> dict:
    import time

    import torch

    setup_torch(job["threads"])
    fn = _loss_fn(job["impl"])
    size = job["size"]
    small = _inputs({**size, "batch": 1, "tokens": 2}, 1)
    fn(*small, job["beta"]).backward()  # warm-up
    hs, ws, ht, wt, mask = _inputs(size, 0)
    times, peaks, losses, grads = [], [], [], None
    for _ in range(job["repeats"]):
        hs.grad = ws.grad = None
        with PeakMemory() as mem:
            start = time.perf_counter()
            loss = fn(hs, ws, ht, wt, mask, job["beta"])
            loss.backward()
            times.append(time.perf_counter() - start)
        peaks.append(mem.above)
        losses.append(float(loss))
        grads = (float(hs.grad.norm()), float(ws.grad.norm()))
        del loss
    return {
        "times": times,
        "peaks": peaks,
        "loss": losses[0],
        "grad_norms": grads,
        "hwm_reset": mem.reset,
        "threads": torch.get_num_threads(),
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[k for k in SIZES if k != "quick"], default="target")
    parser.add_argument("--betas", default=None, help="comma-separated β values (default 0.5,1)")
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    size = SIZES["quick" if args.quick else args.size]
    repeats = args.repeats or (2 if args.quick else 3)
    betas = [float(b) for b in args.betas.split(",")] if args.betas else list(BETAS)
    peer = have_trl() and not args.no_peer
    if not peer:
        print(TRL_MISSING if not have_trl() else "peer skipped (--no-peer)")
    impls = [i for i in IMPLS if peer or i != "trl"]
    info = machine()
    run = job_runner(args, __file__, worker)
    print(
        f"bench_fused: {size}, β {betas}, {repeats} repeats, {args.threads} threads, "
        f"load {info['load_avg_1_5_15']}",
        flush=True,
    )
    cases = []
    for beta in betas:
        case = {"beta": beta, "results": {}}
        for impl in impls:
            res = run({"impl": impl, "size": size, "beta": beta, "repeats": repeats, "threads": args.threads})
            case["results"][impl] = res
            if "error" in res:
                print(f"  {impl} β={beta}: ERROR {res['error'][-500:]}", file=sys.stderr)
            else:
                print(
                    f"  {impl:15s} β={beta}: time {fmt_stats(stats(res['times']), unit=' s')}, "
                    f"peak above inputs {fmt_bytes(stats(res['peaks'])['median'])}, loss {res['loss']:.6g}, "
                    f"grad norms {res['grad_norms'][0]:.6g} / {res['grad_norms'][1]:.6g}",
                    flush=True,
                )
        fused = case["results"]["odistill_fused"]
        for other in impls[1:]:
            res = case["results"][other]
            if "error" in fused or "error" in res:
                continue
            case[f"memory_ratio_vs_{other}"] = paired_ratios(fused["peaks"], res["peaks"])
            case[f"time_ratio_vs_{other}"] = paired_ratios(fused["times"], res["times"])
            case[f"loss_rel_diff_vs_{other}"] = abs(fused["loss"] - res["loss"]) / abs(res["loss"])
        cases.append(case)

    header = ["β"] + [f"{i} time s" for i in impls] + [f"{i} peak above inputs" for i in impls]
    header += [f"fused/{o} memory" for o in impls[1:]] + [f"fused/{o} time" for o in impls[1:]]
    rows = []
    for case in cases:
        res = case["results"]
        row = [f"{case['beta']:g}"]
        row += ["error" if "error" in res[i] else fmt_stats(stats(res[i]["times"])) for i in impls]
        row += ["error" if "error" in res[i] else fmt_bytes(stats(res[i]["peaks"])["median"]) for i in impls]
        row += [fmt_stats(case.get(f"memory_ratio_vs_{o}")) for o in impls[1:]]
        row += [fmt_stats(case.get(f"time_ratio_vs_{o}")) for o in impls[1:]]
        rows.append(row)
    table = markdown_table(header, rows)
    print()
    print(table)
    payload = {
        "benchmark": "fused",
        "size": size,
        "repeats": repeats,
        "threads": args.threads,
        "peer": peer,
        "machine": info,
        "load_avg_after": machine()["load_avg_1_5_15"],
        "cases": cases,
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
