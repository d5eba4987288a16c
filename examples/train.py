"""Distil a teacher into a student with odistill, one process per GPU (or CPU slot).

    torchrun --nproc_per_node N examples/train.py TEACHER STUDENT OUT_DIR   (hub ids or local folders)
    accelerate launch --num_processes N examples/train.py TEACHER STUDENT OUT_DIR

On GPUs it runs the ``gpu`` preset (bf16 autocast, the sampled estimator) for 100 steps; on a CPU the
same preset shrunk to a few seconds. Each process writes ``OUT_DIR/rank<R>.json`` (its losses and a
checksum of its weights, which must agree across processes); rank 0 saves the trained student to
``OUT_DIR/student``. Notebook 07 runs it with two CPU processes on tiny models.
"""

import json
import os
import sys

import torch

import odistill

teacher_name, student_name, out_dir = sys.argv[1:4]
on_gpu = torch.cuda.is_available()
if not on_gpu:
    torch.set_num_threads(1)  # one core per process

# the same call takes a hub id ("Qwen/Qwen2.5-1.5B-Instruct") or a local folder; distill() moves
# both models to this process's device (cuda:LOCAL_RANK under torchrun)
teacher_dtype = torch.bfloat16 if on_gpu else torch.float32
teacher, tokenizer = odistill.load_model(teacher_name, dtype=teacher_dtype)
student, _ = odistill.load_model(student_name, dtype=torch.float32)  # fp32 master weights

questions = [
    "What is reverse KL?",
    "Why should the student write its own samples?",
    "What does the teacher send back?",
    "Is beta = 0 forward KL?",
    "What is a token?",
    "Define distillation.",
    "What does lambda do?",
    "Why use bf16?",
]
dataset = [{"messages": [{"role": "user", "content": q}]} for q in questions]  # on-policy: prompts only

if on_gpu:
    # bf16 autocast, batch 16 per process x 4 accumulation steps, sampled estimator,
    # teacher micro-batches of 4
    checkpoints = os.path.join(out_dir, "checkpoints")
    config = odistill.DistillConfig.preset("gpu", steps=100, output_dir=checkpoints)
else:  # the same preset, shrunk to a few seconds on a CPU
    config = odistill.DistillConfig.preset(
        "gpu",
        steps=3,
        batch_size=2,
        grad_accum=1,
        max_new_tokens=8,
        lr=1e-3,
        warmup_steps=0,
        eval_every=0,
        teacher_micro_batch_size=1,
        mixed_precision="no",
        device="cpu",
        progress=False,
    )
result = odistill.distill(student, teacher, tokenizer, dataset, config)

rank = int(os.environ.get("RANK", 0))
distributed = torch.distributed.is_initialized()
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(
        {
            "rank": rank,
            "world_size": int(os.environ.get("WORLD_SIZE", 1)),
            "backend": torch.distributed.get_backend() if distributed else None,
            "reverse_kl": [row["reverse_kl"] for row in result.history],
            "weights": [float(p.detach().double().sum()) for p in result.student.parameters()],
        },
        f,
    )
if rank == 0:  # one process writes the trained student
    result.student.save_pretrained(os.path.join(out_dir, "student"))
    tokenizer.save_pretrained(os.path.join(out_dir, "student"))
