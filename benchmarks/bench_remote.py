"""A teacher over HTTP: the on-policy step with ``RemoteTeacher`` next to the same step with a local teacher.

The same student, teacher weights, prompts and seed on both sides; the remote side scores through
``odistill serve-teacher`` started as its own process on 127.0.0.1 (loopback: what HTTP, JSON and the
server add, not a network), each process with ``--threads`` torch threads. Each run is a fresh
process; ``--pairs`` pairs (local, then remote) run back to back and the time ratio's statistics are
over steps paired by index. Bytes on the wire are the HTTP bodies the client sent and received, per
optimizer step.

Cases:

* ``tiny``: the lab bench's shipped addition student and teacher (V = 16), batch 32, 8 new tokens.
* ``vocab32k``: random-init Qwen2 models with a 32 000-token vocabulary (student 2 × 64, teacher
  2 × 128, as in ``bench_step``), batch 16, 48 new tokens.

Modes: ``sampled`` (the sampled estimator: one teacher log-prob per token; the target is ≤ 1.3× the
local step at 32k) and ``topk`` (the full estimator on the teacher's top 20 plus the tail: 41 numbers
per token on the wire; top 4 at the lab bench's 16-token vocabulary).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

from _common import (
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
from bench_step import CASES as STEP_CASES
from bench_step import build_case

CASES = {
    "tiny": {**STEP_CASES["tiny"], "steps": 20, "warmup": 3},
    "vocab32k": {**STEP_CASES["vocab32k"], "steps": 8, "warmup": 2},
    "quick": {**STEP_CASES["quick"], "steps": 3, "warmup": 1},
}
MODES = {"sampled": {"estimator": "sampled"}, "topk": {"teacher_top_k": 20}}
#: k of the top-k mode where the vocabulary is smaller than 20 (the lab bench's 16 tokens)
SMALL_VOCAB_TOP_K = 4
#: The target of the sampled mode at a 32k vocabulary: remote step time / local step time.
TARGET_32K_SAMPLED = 1.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(teacher, tok, threads: int):
    """``odistill serve-teacher`` on a saved copy of ``teacher``, in its own process; yields the URL."""
    with tempfile.TemporaryDirectory() as folder:
        teacher.save_pretrained(folder)
        tok.save_pretrained(folder)
        port = _free_port()
        command = [sys.executable, "-m", "odistill", "serve-teacher", "--model", folder]
        command += ["--port", str(port), "--threads", str(threads), "--device", "cpu"]
        proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"odistill serve-teacher did not start: {proc.stderr.read()[-2000:]}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait()


def worker(job: dict) -> dict:
    from odistill import DistillConfig, RemoteTeacher, distill

    setup_torch(job["threads"])
    case = job["case"]
    student, teacher, tok, dataset, desc = build_case(case)
    config = DistillConfig(
        lmbda=1.0,
        beta=1.0,
        batch_size=case["batch"],
        max_new_tokens=case["max_new_tokens"],
        steps=case["warmup"] + case["steps"],
        lr=1e-4,
        device="cpu",
        progress=False,
        seed=0,
        threads=job["threads"],
        **MODES[job["mode"]],
    )
    if config.teacher_top_k and config.teacher_top_k >= len(tok):
        config = replace(config, teacher_top_k=SMALL_VOCAB_TOP_K)
    wire = None
    if job["teacher"] == "remote":
        with served(teacher, tok, job["threads"]) as url:
            remote = RemoteTeacher(url, tokenizer=tok)
            result = distill(student, remote, tok, dataset, config)
            wire = {
                "sent_per_step": remote.bytes_sent / config.steps,
                "received_per_step": remote.bytes_received / config.steps,
                "requests": remote.requests,
            }
    else:
        result = distill(student, teacher, tok, dataset, config)
    times = [row["seconds"] for row in result.history if "seconds" in row]
    tokens = [row["tokens"] for row in result.history if "tokens" in row]
    return {
        "step_times": times[case["warmup"] :],
        "losses": [row["loss"] for row in result.history if "loss" in row],
        "tokens_per_step": sum(tokens) / len(tokens),
        "wire": wire,
        "models": desc,
    }


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--cases", default="tiny,vocab32k", help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--modes", default="sampled,topk", help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--pairs", type=int, default=None, help="process pairs per case (default 3; quick 1)")
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    names = ["quick"] if args.quick else args.cases.split(",")
    modes = args.modes.split(",")
    pairs = args.pairs or (1 if args.quick else 3)
    info = machine()
    print(
        f"bench_remote: cases {names}, modes {modes}, {pairs} pair(s), {args.threads} thread(s)", flush=True
    )
    # a remote run starts a server process: always a fresh worker process, even with --quick
    run = job_runner(argparse_namespace(args, spawn=True), __file__, worker)
    results = []
    for name in names:
        case = dict(CASES[name])
        if args.repeats:
            case["steps"] = args.repeats
        for mode in modes:
            runs = {"local": [], "remote": []}
            for _ in range(pairs):
                for side in ("local", "remote"):
                    res = run({"case": case, "mode": mode, "teacher": side, "threads": args.threads})
                    runs[side].append(res)
                    if "error" in res:
                        print(f"  {name} {mode} {side}: ERROR {res['error'][-800:]}", file=sys.stderr)
                    else:
                        print(
                            f"  {name:9s} {mode:8s} {side:7s} s/step {fmt_stats(stats(res['step_times']))}",
                            flush=True,
                        )
            entry = {"case": name, "mode": mode, "config": case, "runs": runs}
            ok = [
                (a, b)
                for a, b in zip(runs["local"], runs["remote"], strict=True)
                if "error" not in a and "error" not in b
            ]
            entry["local_step_s"] = stats([t for a, _ in ok for t in a["step_times"]])
            entry["remote_step_s"] = stats([t for _, b in ok for t in b["step_times"]])
            entry["overhead_remote_over_local"] = stats(
                y / x for a, b in ok for x, y in zip(a["step_times"], b["step_times"], strict=False)
            )
            entry["max_loss_difference"] = max(
                (abs(x - y) for a, b in ok for x, y in zip(a["losses"], b["losses"], strict=True)),
                default=None,
            )
            wires = [b["wire"] for _, b in ok]
            entry["bytes_per_step"] = stats(w["sent_per_step"] + w["received_per_step"] for w in wires)
            entry["tokens_per_step"] = ok[0][1]["tokens_per_step"] if ok else None
            results.append(entry)

    header = [
        "case",
        "mode",
        "local s/step",
        "remote s/step",
        "remote / local",
        "bytes on the wire per step",
        "max |loss difference|",
    ]
    rows = [
        [
            e["case"],
            e["mode"],
            fmt_stats(e["local_step_s"]),
            fmt_stats(e["remote_step_s"]),
            fmt_stats(e["overhead_remote_over_local"]),
            fmt_bytes((e["bytes_per_step"] or {}).get("median")),
            f"{e['max_loss_difference']:.1e}" if e["max_loss_difference"] is not None else "–",
        ]
        for e in results
    ]
    table = markdown_table(header, rows)
    print()
    print(table)
    for e in results:
        if e["case"] == "vocab32k" and e["mode"] == "sampled" and e["overhead_remote_over_local"]:
            ratio = e["overhead_remote_over_local"]["median"]
            verdict = "met" if ratio <= TARGET_32K_SAMPLED else "missed"
            print(f"target: remote / local ≤ {TARGET_32K_SAMPLED} at 32k, sampled: {ratio:.2f} ({verdict})")
    payload = {
        "benchmark": "remote",
        "cases": results,
        "pairs": pairs,
        "threads": args.threads,
        "machine": info,
        "load_avg_after": machine()["load_avg_1_5_15"],
        "table_md": table,
        "target_32k_sampled": TARGET_32K_SAMPLED,
    }
    write_json(args.json, payload)
    return payload


def argparse_namespace(args, **changes):
    """``args`` with some attributes changed (job_runner reads ``quick`` and ``spawn``)."""
    copy = type(args)(**vars(args))
    for key, value in changes.items():
        setattr(copy, key, value)
    return copy


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
