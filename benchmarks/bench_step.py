"""One full on-policy distillation step (λ = 1, β = 1: sample, score, update): odistill vs TRL GKDTrainer.

Both sides get the same student and teacher (loaded from the same weights), the same prompts, batch
size, ``max_new_tokens``, sampling temperature 1 (no top-k / top-p), AdamW with the same learning
rate and gradient clipping 1.0, float32 on CPU with the same number of threads. TRL runs as
``GKDTrainer(GKDConfig(lmbda=1, beta=1, use_cpu=True, bf16=False, gradient_checkpointing=False))``
(``gradient_checkpointing=False`` keeps its KV cache on during generation); odistill as
``distill(..., DistillConfig(lmbda=1, beta=1))``.

Cases:

* ``tiny``: the lab bench's shipped ``addition`` student (2 × 64) and teacher (4 × 256), vocabulary 16,
  batch 32, ``max_new_tokens`` 8 (the answers stop at EOS after 5 tokens).
* ``permutations``: the lab bench's shipped ``permutations`` student (2 × 64) and teacher (2 × 128),
  batch 48, ``max_new_tokens`` 7 (answer + EOS).
* ``vocab32k``: small random-init Qwen2 models (student 2 × 64, teacher 2 × 128) with a 32 000-token
  vocabulary, batch 16, 48 new tokens (random models rarely emit EOS, so every completion is full
  length): here the logits and the loss dominate.

Per step we record the wall time (TRL: ``on_step_begin`` → ``on_step_end`` callback; odistill: the
loop's own per-step timer, which spans the same work), skipping warm-up steps; peak memory = RSS
high-water mark during training − RSS after the models and data are loaded (both include the AdamW
state). Each framework runs in its own fresh process; ``--pairs`` process pairs run back to back and the
time ratio's statistics are over steps paired by index.
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
    setup_torch,
    stats,
    write_json,
)

CASES = {
    "tiny": {"models": "shipped:addition", "batch": 32, "max_new_tokens": 8, "steps": 20, "warmup": 3},
    "permutations": {
        "models": "shipped:permutations",
        "batch": 48,
        "max_new_tokens": 7,
        "steps": 20,
        "warmup": 3,
    },
    "vocab32k": {
        "models": "random:qwen2",
        "vocab": 32000,
        "student": {"layers": 2, "hidden": 64, "heads": 4, "mlp": 256},
        "teacher": {"layers": 2, "hidden": 128, "heads": 4, "mlp": 512},
        "batch": 16,
        "max_new_tokens": 48,
        "steps": 8,
        "warmup": 2,
    },
    "quick": {
        "models": "random:llama",
        "vocab": 600,
        "student": {"layers": 1, "hidden": 32, "heads": 2, "mlp": 64},
        "teacher": {"layers": 1, "hidden": 48, "heads": 2, "mlp": 96},
        "batch": 4,
        "max_new_tokens": 4,
        "steps": 3,
        "warmup": 1,
    },
}
LR = 1e-4


# ----------------------------------------------------------------------------------------------
# worker
# ----------------------------------------------------------------------------------------------


def _big_vocab_tokenizer(vocab: int):
    """A character tokenizer with exactly ``vocab`` tokens: the addition symbols plus filler characters."""
    from odistill.bench.tokenizer import build_char_tokenizer

    task_symbols = "0123456789+="
    fillers = [chr(0x4E00 + i) for i in range(vocab - 4 - len(task_symbols))]  # CJK block: single characters
    tok = build_char_tokenizer(list(task_symbols) + fillers)
    assert len(tok) == vocab, len(tok)
    return tok


def build_case(case: dict):
    """(student, teacher, tokenizer, dataset) for a case; the same weights in every process (seeded)."""
    from odistill.bench.models import build_model, load_model
    from odistill.bench.tasks import get_task

    kind, name = case["models"].split(":")
    dataset = get_task(name if kind == "shipped" else "addition").make_dataset(4096, seed=0)
    if kind == "shipped":
        try:
            student, tok = load_model(f"{name}-student")
            teacher, _ = load_model(f"{name}-teacher")
            return student.train(), teacher.eval(), tok, dataset, f"shipped {name}-student / {name}-teacher"
        except Exception as error:  # checkpoints not built: fall back to random models of the same sizes
            print(f"shipped checkpoints unavailable ({error}); using random-init models", file=sys.stderr)
            case = {**case, "vocab": 16, "student": "tiny", "teacher": "base"}
            kind, name = "random", "llama"
    if case["vocab"] <= 16:
        from odistill.bench.tokenizer import build_char_tokenizer

        tok = build_char_tokenizer("0123456789+=")
    else:
        tok = _big_vocab_tokenizer(case["vocab"])
    student = build_model(case["student"], tokenizer=tok, seed=1, arch=name, max_positions=128)
    teacher = build_model(case["teacher"], tokenizer=tok, seed=2, arch=name, max_positions=128)
    return student.train(), teacher.eval(), tok, dataset, f"random {name} V={len(tok)}"


def _run_odistill(student, teacher, tok, dataset, case):
    from odistill import DistillConfig, distill

    config = DistillConfig(
        lmbda=1.0,
        beta=1.0,
        batch_size=case["batch"],
        max_new_tokens=case["max_new_tokens"],
        steps=case["warmup"] + case["steps"],
        lr=LR,
        max_grad_norm=1.0,
        device="cpu",
        progress=False,
        seed=0,
        temperature=1.0,
    )
    result = distill(student, teacher, tok, dataset, config)
    return [row["seconds"] for row in result.history if "seconds" in row]


def _run_trl(student, teacher, tok, dataset, case, tmpdir):
    import time

    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    times = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    args = GKDConfig(
        output_dir=tmpdir,
        per_device_train_batch_size=case["batch"],
        max_steps=case["warmup"] + case["steps"],
        lmbda=1.0,
        beta=1.0,
        max_new_tokens=case["max_new_tokens"],
        temperature=1.0,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[StepTimer()],
    )
    trainer.train()
    return times


def worker(job: dict) -> dict:
    import tempfile

    import torch

    setup_torch(job["threads"])
    case = job["case"]
    student, teacher, tok, dataset, desc = build_case(case)
    with tempfile.TemporaryDirectory() as tmpdir, PeakMemory() as mem:
        if job["impl"] == "trl":
            times = _run_trl(student, teacher, tok, dataset, case, tmpdir)
        else:
            times = _run_odistill(student, teacher, tok, dataset, case)
    return {
        "step_times": times[case["warmup"] :],
        "warmup_times": times[: case["warmup"]],
        "peak": mem.above,
        "models": desc,
        "threads": torch.get_num_threads(),
        "hwm_reset": mem.reset,
    }


# ----------------------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default="tiny,permutations,vocab32k", help="comma-separated: " + ", ".join(CASES)
    )
    parser.add_argument("--pairs", type=int, default=None, help="process pairs per case (default 2; quick 1)")
    args = parser.parse_args(argv)
    if args.worker:
        emit(worker(json.loads(args.worker)))
        return {}
    names = ["quick"] if args.quick else args.cases.split(",")
    pairs = args.pairs or (1 if args.quick else 2)
    peer = have_trl() and not args.no_peer
    if not peer:
        print(TRL_MISSING if not have_trl() else "peer skipped (--no-peer)")
    info = machine()
    print(
        f"bench_step: cases {names}, {pairs} process pair(s) each, {args.threads} threads, "
        f"load {info['load_avg_1_5_15']}",
        flush=True,
    )
    run = job_runner(args, __file__, worker)
    results = []
    for name in names:
        case = dict(CASES[name])
        if args.repeats:
            case["steps"] = args.repeats
        runs = {"odistill": [], "trl": []}
        for _ in range(pairs):
            for impl in ["odistill"] + (["trl"] if peer else []):
                res = run({"impl": impl, "case": case, "threads": args.threads})
                runs[impl].append(res)
                if "error" in res:
                    print(f"  {name} {impl}: ERROR {res['error'][-800:]}", file=sys.stderr)
                else:
                    print(
                        f"  {name:9s} {impl:9s} s/step {fmt_stats(stats(res['step_times']))}, "
                        f"peak {fmt_bytes(res['peak'])} ({res['models']})",
                        flush=True,
                    )
        entry = {"case": name, "config": case, "runs": runs}
        ours = [r for r in runs["odistill"] if "error" not in r]
        entry["odistill_step_s"] = stats([t for r in ours for t in r["step_times"]])
        entry["odistill_peak"] = stats([r["peak"] for r in ours])
        if peer:
            theirs = [r for r in runs["trl"] if "error" not in r]
            entry["trl_step_s"] = stats([t for r in theirs for t in r["step_times"]])
            entry["trl_peak"] = stats([r["peak"] for r in theirs])
            step_ratios, mem_ratios = [], []
            for a, b in zip(runs["odistill"], runs["trl"], strict=True):
                if "error" in a or "error" in b:
                    continue
                step_ratios += [y / x for x, y in zip(a["step_times"], b["step_times"], strict=False)]
                mem_ratios.append(a["peak"] / b["peak"] if b["peak"] else None)
            entry["speedup_trl_over_odistill"] = stats(step_ratios)  # TRL time / odistill time: > 1 = faster
            entry["memory_ratio"] = stats(mem_ratios)  # odistill / TRL
        results.append(entry)

    header = ["case", "odistill s/step", "odistill peak"]
    if peer:
        header += [
            "TRL s/step",
            "TRL peak",
            "speed-up (TRL time / odistill time)",
            "memory ratio odistill/TRL",
        ]
    rows = []
    for e in results:
        row = [
            e["case"],
            fmt_stats(e["odistill_step_s"]),
            fmt_bytes((e["odistill_peak"] or {}).get("median")),
        ]
        if peer:
            row += [
                fmt_stats(e["trl_step_s"]),
                fmt_bytes((e["trl_peak"] or {}).get("median")),
                fmt_stats(e["speedup_trl_over_odistill"]),
                fmt_stats(e["memory_ratio"]),
            ]
        rows.append(row)
    table = markdown_table(header, rows)
    print()
    print(table)
    payload = {
        "benchmark": "step",
        "cases": results,
        "pairs": pairs,
        "threads": args.threads,
        "peer": peer,
        "machine": info,
        "load_avg_after": machine()["load_avg_1_5_15"],
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
