"""Does on-policy distillation beat off-policy at equal student steps on a task with exposure bias?

A small, standalone experiment (plain PyTorch loop, no odistill trainer): from the same warm-started
student, train with full-vocabulary per-token KL on completion tokens, either on sequences sampled from
the teacher ("off", sequence-level KD) or from the student itself ("on"), for the same number of steps,
and compare the task score (greedy and temperature-1) on held-out prompts.

    python scripts/explore_exposure_bias.py --teacher DIR --student DIR --task sorting --steps 300

Results are printed as a table and written to --out as JSON. See the bottom of this file for what was
measured when the lab bench was built; on sorting (the shipped task, ``odistill.bench.tasks.sorting``):

**Measured: on-policy did *not* beat off-policy at equal steps here** (``scripts/explore_exposure_bias.py``,
teacher 4 × 128, student 2 × 64, full-vocabulary KL, batch 64, lr 1e-3, 150 steps, one seed, greedy /
temperature-1 validity on 300 held-out prompts):

==================  ===========  ===========  ===========  ===========
student at start    off, fwd KL  on, fwd KL   off, rev KL  on, rev KL
==================  ===========  ===========  ===========  ===========
0.19 / 0.00 (60)    0.99 / 0.73  0.03 / 0.00  0.99 / 0.85  0.66 / 0.40
0.88 / 0.17 (100)   0.94 / 0.81  0.95 / 0.15  0.98 / 0.93  0.98 / 0.91
==================  ===========  ===========  ===========  ===========

From a weak student (the shipped one, 60 warm-up steps) on-policy is far *worse*: its samples are
mostly not near-sorted prefixes the teacher can guide, and forward KL on them collapses. From a
competent student, on-policy reverse KL only ties off-policy reverse KL (its steps are cheaper: 20 s vs
30 s here), and reverse KL beats forward KL on temperature-1 validity either way. The student's greedy
slips are rare once it sorts at all, so clean teacher prefixes already cover what it needs. The task is
kept as the honest exposure-bias exhibit: the states exist (a student that sorts 0.996 greedy after
300 warm-up steps recovers from a random prefix only ≈ 5 % of the time, the teacher 100 %), but
equal-step gains did not show in these runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

from odistill.bench.evaluation import evaluate
from odistill.bench.models import load_model
from odistill.bench.tasks import get_task
from odistill.core.divergences import forward_kl, reverse_kl


def sample_sequences(model, tokenizer, prompts, *, max_new_tokens, temperature=1.0):
    """Sample one completion per prompt; returns ids (B, T), attention_mask (B, T), completion_mask (B, T).

    ``completion_mask`` is True on generated tokens up to and including the first EOS.
    """
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )  # (B, P + N)
    prompt_len = batch["input_ids"].shape[1]
    new = out[:, prompt_len:]  # (B, N)
    is_eos = new == tokenizer.eos_token_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    completion = ~after_eos  # (B, N)
    attention_mask = torch.cat([batch["attention_mask"].bool(), completion], dim=1)  # (B, T)
    completion_mask = torch.cat(
        [torch.zeros_like(batch["attention_mask"], dtype=torch.bool), completion], dim=1
    )
    return out.clone(), attention_mask, completion_mask


def logits_for(model, ids, attention_mask):
    """Logits (B, T, V) with position ids counted from the first real token (left padding)."""
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return model(input_ids=ids, attention_mask=attention_mask.long(), position_ids=position_ids).logits


def distill(
    student, teacher, tokenizer, task, *, policy, divergence, steps, lr, batch_size, seed, eval_every, eval_n
):
    torch.manual_seed(seed)
    prompts = task.sample_prompts(steps * batch_size, seed=1000 + seed, split="train")
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    loss_fn = forward_kl if divergence == "fkl" else reverse_kl
    curve = []
    for step in range(1, steps + 1):
        batch_prompts = prompts[(step - 1) * batch_size : step * batch_size]
        source = student if policy == "on" else teacher
        student.eval()
        ids, attention_mask, completion_mask = sample_sequences(
            source, tokenizer, batch_prompts, max_new_tokens=task.max_new_tokens
        )
        student.train()
        with torch.no_grad():
            teacher_logits = logits_for(teacher, ids, attention_mask)[:, :-1]  # (B, T-1, V)
        student_logits = logits_for(student, ids, attention_mask)[:, :-1]  # (B, T-1, V)
        mask = completion_mask[:, 1:]  # logits at t predict token t + 1
        loss = loss_fn(student_logits, teacher_logits, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            student.eval()
            r = evaluate(student, tokenizer, task, n=eval_n, seed=0, samples_per_prompt=4)
            curve.append(
                {"step": step, "greedy": r["accuracy"], "sampled": r["sampled_validity"], "loss": loss.item()}
            )
    student.eval()
    return curve


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="sorting")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--divergences", nargs="+", default=["fkl", "rkl"])
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if "OMP_NUM_THREADS" not in os.environ:  # on a busy 2-core machine, OMP_NUM_THREADS=1 is much faster
        torch.set_num_threads(2)

    task = get_task(args.task)
    teacher, tokenizer = load_model(args.teacher)
    student0, _ = load_model(args.student)
    for name, model in (("teacher", teacher), ("student (start)", student0)):
        r = evaluate(model, tokenizer, task, n=args.eval_n, seed=0, samples_per_prompt=4)
        print(f"{name:>16}: greedy {r['accuracy']:.3f}  sampled {r['sampled_validity']:.3f}", flush=True)

    results = {}
    for divergence in args.divergences:
        for policy in ("off", "on"):
            key = f"{policy}/{divergence}"
            results[key] = []
            for seed in args.seeds:
                start = time.perf_counter()
                curve = distill(
                    copy.deepcopy(student0),
                    teacher,
                    tokenizer,
                    task,
                    policy=policy,
                    divergence=divergence,
                    steps=args.steps,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    seed=seed,
                    eval_every=args.eval_every,
                    eval_n=args.eval_n,
                )
                seconds = time.perf_counter() - start
                results[key].append({"seed": seed, "curve": curve, "seconds": seconds})
                points = "  ".join(f"{c['step']}:{c['greedy']:.2f}/{c['sampled']:.2f}" for c in curve)
                print(f"{key:>8} seed {seed} ({seconds:.0f} s)  step:greedy/sampled  {points}", flush=True)

    print("\nfinal (mean over seeds): method, greedy, sampled")
    for key, runs in results.items():
        greedy = statistics.mean(r["curve"][-1]["greedy"] for r in runs)
        sampled = statistics.mean(r["curve"][-1]["sampled"] for r in runs)
        print(f"{key:>8}  {greedy:.3f}  {sampled:.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------------------------
# Measured while building the lab bench (Nov 2026, 2-core CPU shared with another job, OMP_NUM_THREADS=1).
# Task `sorting` (8 distinct letters, validity score), teacher = shipped sorting-teacher (4 x 128,
# trained with corrupted prefixes: recovers from a random prefix 100 % of the time, writes the sorted
# string 100 %), student 2 x 64; full-vocabulary KL on completion tokens; batch 64; lr 1e-3; 150 steps;
# seed 0; greedy / temperature-1 validity on 300 held-out prompts; seconds per run include the evaluations.
#
#   student start (warm-up)   off/fkl          on/fkl           off/rkl          on/rkl
#   0.19 / 0.00  (60 steps)   0.99/0.73 (44s)  0.03/0.00 (31s)  0.99/0.85 (41s)  0.66/0.40 (27s)
#   0.88 / 0.17 (100 steps)   0.94/0.81 (29s)  0.95/0.15 (25s)  0.98/0.93 (30s)  0.98/0.91 (20s)
#
# Conclusion: no on-policy advantage at equal steps. From a weak student on-policy is much worse (the teacher
# is asked about garbage prefixes); from a competent one on-policy reverse KL ties off-policy reverse KL at a
# lower cost per step. Reverse KL > forward KL on temperature-1 validity in both. One seed only: treat the
# small differences (0.91 vs 0.93) as noise.
