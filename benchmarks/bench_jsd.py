"""Generalized JSD forward + backward: odistill vs TRL's ``GKDTrainer.generalized_jsd_loss``.

For each (B, T, V) and β ∈ {0, 0.5, 1} (β = 0 forward KL, β = 1 reverse KL, the same convention
in both libraries): float32 CPU logits (``randn · 2``), the student requires grad, the teacher does
not, every position counts (odistill ``mask`` all True, TRL ``labels`` all ≠ −100, so both take the
mean over tokens). Each implementation runs in its own fresh process; per repeat we record

* time of ``loss = f(student, teacher); loss.backward()``,
* peak memory above the inputs (RSS high-water mark − RSS before; see ``_common.py``) — this
  includes the ``(B, T, V)`` gradient that both implementations must produce.

Accuracy (separate process, 256 rows of the same V): the loss and the student gradient of odistill
(chunked path, float32) and TRL (float32) against odistill's plain path run in float64; error =
max |x − x_ref| / max |x_ref| (the loss: |x − x_ref| / |x_ref|).

Usage::

    python benchmarks/bench_jsd.py                 # the target sizes (8,512,32000) and (2,512,151936)
    python benchmarks/bench_jsd.py --size modest   # (2,512,32000) and (1,256,151936): run_all's size
    python benchmarks/bench_jsd.py --quick         # tiny smoke run
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
    "target": [(8, 512, 32000), (2, 512, 151936)],
    "modest": [(2, 512, 32000), (1, 256, 151936)],
    "quick": [(2, 16, 512)],
}
BETAS = (0.0, 0.5, 1.0)
LOGIT_SCALE = 2.0


# ----------------------------------------------------------------------------------------------
# workers (run in a fresh process)
# ----------------------------------------------------------------------------------------------


def _loss_fn(impl: str):
    import torch

    if impl == "trl":
        from trl.experimental.gkd import GKDTrainer

        def trl_loss(student, teacher, mask, beta):
            labels = torch.where(mask, 0, -100)
            return GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta)

        return trl_loss
    from odistill import generalized_jsd

    chunk = None if impl == "odistill_plain" else "auto"

    def odistill_loss(student, teacher, mask, beta):
        return generalized_jsd(student, teacher, mask, beta=beta, chunk_size=chunk)

    return odistill_loss


def _inputs(shape, seed, dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    student = torch.randn(*shape, generator=g, dtype=dtype or torch.float32).mul_(LOGIT_SCALE)
    teacher = torch.randn(*shape, generator=g, dtype=dtype or torch.float32).mul_(LOGIT_SCALE)
    mask = torch.ones(shape[:-1], dtype=torch.bool)
    return student.requires_grad_(True), teacher, mask


def worker_timing(job: dict) -> dict:
    import torch

    setup_torch(job["threads"])
    fn = _loss_fn(job["impl"])
    small_s, small_t, small_m = _inputs((1, 4, job["shape"][-1]), 1)
    fn(small_s, small_t, small_m, job["beta"]).backward()  # warm-up: kernels, lazy imports
    student, teacher, mask = _inputs(tuple(job["shape"]), 0)
    times, peaks, losses = [], [], []
    for _ in range(job["repeats"]):
        student.grad = None
        with PeakMemory() as mem:
            start = __import__("time").perf_counter()
            loss = fn(student, teacher, mask, job["beta"])
            loss.backward()
            times.append(__import__("time").perf_counter() - start)
        peaks.append(mem.above)
        losses.append(float(loss))
        del loss
    return {
        "times": times,
        "peaks": peaks,
        "loss": losses[0],
        "input_bytes": student.numel() * 4,
        "hwm_reset": mem.reset,
        "threads": torch.get_num_threads(),
    }


def worker_accuracy(job: dict) -> dict:
    import torch

    from odistill import generalized_jsd

    setup_torch(job["threads"])
    out = []
    for vocab in job["vocabs"]:
        shape = (2, job["rows"] // 2, vocab)
        for beta in BETAS:
            s, t, mask = _inputs(shape, 7)
            s64 = s.detach().double().requires_grad_(True)
            ref = generalized_jsd(s64, t.double(), mask, beta=beta, chunk_size=None)
            (ref_grad,) = torch.autograd.grad(ref, s64)
            row = {"V": vocab, "beta": beta, "rows": job["rows"]}
            impls = {"odistill": lambda a, b, m, be: generalized_jsd(a, b, m, beta=be, chunk_size=8)}
            if job["peer"]:
                impls["trl"] = _loss_fn("trl")
            got = {}
            for name, fn in impls.items():
                x = s.detach().clone().requires_grad_(True)
                value = fn(x, t, mask, beta)
                (grad,) = torch.autograd.grad(value, x)
                got[name] = (value.double(), grad.double())
                row[f"{name}_value_rel_err"] = float((value.double() - ref).abs() / ref.abs())
                row[f"{name}_grad_rel_err"] = float(
                    (grad.double() - ref_grad).abs().max() / ref_grad.abs().max()
                )
            if "trl" in got:
                (va, ga), (vb, gb) = got["odistill"], got["trl"]
                row["odistill_vs_trl_value_rel"] = float((va - vb).abs() / vb.abs())
                row["odistill_vs_trl_grad_rel"] = float((ga - gb).abs().max() / gb.abs().max())
            out.append(row)
    return {"accuracy": out}


# ----------------------------------------------------------------------------------------------
# the parent: schedule workers, print the table
# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="target")
    parser.add_argument(
        "--with-plain", action="store_true", help="also time odistill's plain (unchunked) path"
    )
    parser.add_argument("--betas", default=None, help="comma-separated β values (default 0,0.5,1)")
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        emit(worker_accuracy(job) if job["kind"] == "accuracy" else worker_timing(job))
        return {}

    size = "quick" if args.quick else args.size
    repeats = args.repeats or (2 if args.quick else 3)
    betas = [float(b) for b in args.betas.split(",")] if args.betas else list(BETAS)
    peer = have_trl() and not args.no_peer
    if not peer:
        print(TRL_MISSING if not have_trl() else "peer skipped (--no-peer)")
    impls = ["odistill"] + (["odistill_plain"] if args.with_plain else []) + (["trl"] if peer else [])
    info = machine()
    run = job_runner(
        args, __file__, lambda job: worker_accuracy(job) if job["kind"] == "accuracy" else worker_timing(job)
    )
    print(
        f"bench_jsd: sizes {SIZES[size]}, β {betas}, {repeats} repeats, {args.threads} threads, "
        f"load {info['load_avg_1_5_15']}",
        flush=True,
    )

    cases = []
    for shape in SIZES[size]:
        for beta in betas:
            case = {"shape": list(shape), "beta": beta, "results": {}}
            for impl in impls:  # back to back, so paired repeats see similar load
                job = {
                    "kind": "timing",
                    "impl": impl,
                    "shape": list(shape),
                    "beta": beta,
                    "repeats": repeats,
                    "threads": args.threads,
                }
                res = run(job)
                case["results"][impl] = res
                if "error" in res:
                    print(f"  {impl} {shape} β={beta}: ERROR {res['error'][-500:]}", file=sys.stderr)
                else:
                    print(
                        f"  {impl:15s} {tuple(shape)} β={beta}: "
                        f"time {fmt_stats(stats(res['times']), unit=' s')}, "
                        f"peak above inputs {fmt_bytes(stats(res['peaks'])['median'])}, "
                        f"loss {res['loss']:.6g}",
                        flush=True,
                    )
            ours, theirs = case["results"]["odistill"], case["results"].get("trl", {})
            if peer and "error" not in ours and "error" not in theirs:
                case["time_ratio"] = paired_ratios(ours["times"], theirs["times"])
                case["memory_ratio"] = paired_ratios(ours["peaks"], theirs["peaks"])
                case["loss_rel_diff_vs_trl"] = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
            cases.append(case)

    rows_acc = 256 if size != "quick" else 8
    vocabs = sorted({shape[-1] for shape in SIZES[size]})
    accuracy = run(
        {"kind": "accuracy", "vocabs": vocabs, "rows": rows_acc, "peer": peer, "threads": args.threads}
    )
    info_after = machine()["load_avg_1_5_15"]

    # ---- tables
    header = ["(B, T, V)", "β", "odistill time s", "odistill peak above inputs"]
    if peer:
        header += [
            "TRL time s",
            "TRL peak above inputs",
            "time ratio odistill/TRL",
            "memory ratio odistill/TRL",
        ]
    rows = []
    for case in cases:
        ours = case["results"]["odistill"]
        row = [str(tuple(case["shape"])), f"{case['beta']:g}"]
        if "error" in ours:
            rows.append(row + ["error"] * (len(header) - 2))
            continue
        row += [fmt_stats(stats(ours["times"])), fmt_bytes(stats(ours["peaks"])["median"])]
        if peer:
            theirs = case["results"].get("trl", {})
            if "error" in theirs:
                row += ["error"] * 4
            else:
                row += [
                    fmt_stats(stats(theirs["times"])),
                    fmt_bytes(stats(theirs["peaks"])["median"]),
                    fmt_stats(case.get("time_ratio")),
                    fmt_stats(case.get("memory_ratio")),
                ]
        rows.append(row)
    table = markdown_table(header, rows)
    print()
    print(table)

    acc_table = ""
    if "accuracy" in accuracy:
        acc_header = ["V", "β", "odistill loss rel err", "odistill grad rel err"]
        if peer:
            acc_header += [
                "TRL loss rel err",
                "TRL grad rel err",
                "odistill vs TRL loss",
                "odistill vs TRL grad",
            ]
        acc_rows = []
        for r in accuracy["accuracy"]:
            row = [
                r["V"],
                f"{r['beta']:g}",
                f"{r['odistill_value_rel_err']:.1e}",
                f"{r['odistill_grad_rel_err']:.1e}",
            ]
            if peer:
                row += [
                    f"{r['trl_value_rel_err']:.1e}",
                    f"{r['trl_grad_rel_err']:.1e}",
                    f"{r['odistill_vs_trl_value_rel']:.1e}",
                    f"{r['odistill_vs_trl_grad_rel']:.1e}",
                ]
            acc_rows.append(row)
        acc_table = markdown_table(acc_header, acc_rows)
        print()
        print(f"accuracy vs odistill's float64 reference ({rows_acc} rows; error = max|x − ref| / max|ref|):")
        print(acc_table)
    else:
        print(f"accuracy worker failed: {accuracy.get('error')}", file=sys.stderr)

    payload = {
        "benchmark": "jsd",
        "size": size,
        "repeats": repeats,
        "threads": args.threads,
        "peer": peer,
        "machine": info,
        "load_avg_after": info_after,
        "cases": cases,
        "accuracy": accuracy.get("accuracy"),
        "table_md": table,
        "accuracy_md": acc_table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
