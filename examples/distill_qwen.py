"""On-policy distillation of a real chat model: Qwen2.5-1.5B-Instruct into Qwen2.5-0.5B-Instruct.

A recipe, not library code: it builds a DistillConfig from the ``gpu`` preset and calls
:func:`odistill.distill`; copy it and change what you need. The student samples completions of the
dataset's prompts, the teacher scores every sampled token (Thinking Machines' sampled estimator with a
batch-mean baseline), and the trained student is saved to ``OUTPUT_DIR/final`` (LoRA adapters merged).

One GPU::

    python examples/distill_qwen.py \\
        --teacher Qwen/Qwen2.5-1.5B-Instruct --student Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset HuggingFaceH4/ultrachat_200k --split train_sft --max-samples 20000 \\
        --steps 500 --output-dir runs/qwen-opd --report-to tensorboard,jsonl

Several GPUs on one machine (data parallel; each process samples its own share of the batch)::

    accelerate launch --config_file configs/accelerate/ddp.yaml examples/distill_qwen.py --teacher … ...

A student too big to replicate: shard it with FSDP2 (weights, gradients and Adam state split across the
GPUs; ``--fsdp-shard-teacher`` shards the teacher as well)::

    accelerate launch --config_file configs/accelerate/fsdp.yaml examples/distill_qwen.py --teacher … ...

Bigger students: ``--lora-r 16 --gradient-checkpointing``. A teacher on another machine: start
``odistill serve-teacher --model Qwen/Qwen2.5-7B-Instruct --device cuda --dtype bfloat16`` there and pass
``--teacher-url http://HOST:8000`` here (the teacher is then not loaded locally). Any chat dataset with a
``messages`` column works (its last assistant message is dropped: the student writes its own); a local
``.json``/``.jsonl`` file too. Interrupted? Run the same command with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

import torch

import odistill as od


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="Qwen/Qwen2.5-1.5B-Instruct", help="hub id or local folder")
    p.add_argument("--student", default="Qwen/Qwen2.5-0.5B-Instruct", help="hub id or local folder")
    p.add_argument("--teacher-url", default=None, help="score with a served teacher instead of --teacher")
    p.add_argument("--dataset", required=True, help="hub dataset id, or a local .json / .jsonl file")
    p.add_argument("--split", default="train")
    p.add_argument("--max-samples", type=int, default=None, help="use the first N examples")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per micro-batch (gpu preset: 16)")
    p.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (gpu preset: 4)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="gpu preset: 512")
    p.add_argument("--lr", type=float, default=None, help="gpu preset: 1e-5 (LoRA: try 1e-4)")
    p.add_argument("--lora-r", type=int, default=0, help="train LoRA adapters of this rank (0: all weights)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument(
        "--fsdp-shard-teacher",
        action="store_true",
        help="under an FSDP accelerate config, shard the teacher too (default: every process holds it)",
    )
    p.add_argument("--report-to", default="jsonl", help="comma-separated: jsonl, tensorboard, wandb, trackio")
    p.add_argument("--output-dir", default="runs/qwen-opd")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --output-dir"
    )
    p.add_argument("--device", default="auto", help="auto, cuda, cpu (cpu: float32, for a dry run)")
    return p.parse_args(argv)


def load_prompts(name: str, split: str, max_samples: int | None):
    from datasets import load_dataset

    path = Path(name)
    if path.suffix in (".json", ".jsonl") and path.is_file():
        dataset = load_dataset("json", data_files=str(path), split="train")
    else:
        dataset = load_dataset(name, split=split)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if "messages" not in dataset.column_names and "prompt" not in dataset.column_names:
        raise SystemExit(f"{name} has neither a 'messages' nor a 'prompt' column: {dataset.column_names}")
    return dataset


def main(argv=None) -> int:
    args = parse_args(argv)
    on_gpu = args.device != "cpu" and torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    student, tokenizer = od.load_model(args.student, dtype=torch.float32, device="cuda" if on_gpu else "cpu")
    if args.teacher_url:
        teacher = od.RemoteTeacher(args.teacher_url, tokenizer=tokenizer)
    else:
        teacher, _ = od.load_model(args.teacher, dtype=dtype, device="cuda" if on_gpu else "cpu")
    overrides = {
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "max_new_tokens": args.max_new_tokens,
        "lr": args.lr,
    }
    config = replace(
        od.DistillConfig.preset("gpu"),
        **{k: v for k, v in overrides.items() if v is not None},
        steps=args.steps,
        lora_r=args.lora_r,
        gradient_checkpointing=args.gradient_checkpointing,
        fsdp_shard_teacher=args.fsdp_shard_teacher,
        report_to=tuple(n for n in args.report_to.split(",") if n),
        output_dir=args.output_dir,
        save_every=args.save_every,
        eval_every=0,
        device="cuda" if on_gpu else "cpu",
        mixed_precision="bf16" if on_gpu else "no",
        log_samples_every=max(1, args.steps // 10),
    )
    dataset = load_prompts(args.dataset, args.split, args.max_samples)
    main_process = os.environ.get("RANK", "0") == "0"  # under a launcher, only the main process reports
    if main_process:
        print(
            f"{config.describe()} · {len(dataset)} prompts · student {args.student} · teacher "
            f"{args.teacher_url or args.teacher}",
            flush=True,
        )
    result = od.distill(
        student, teacher, tokenizer, dataset, config, resume_from=args.output_dir if args.resume else None
    )
    final = Path(args.output_dir) / "final"
    od.save_student(result.student, final, tokenizer)  # every process calls it; LoRA merged, FSDP gathered
    steps = [row for row in result.history if "loss" in row]
    summary = {
        "steps": len(steps),
        "seconds": result.seconds,
        "reverse_kl_first": steps[0]["reverse_kl"] if steps else None,
        "reverse_kl_last": steps[-1]["reverse_kl"] if steps else None,
        "saved": str(final),
        "processes": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
    }
    if main_process:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
