"""Supervised fine-tuning (SFT): cross-entropy on the completion tokens of (prompt, answer) pairs.

This trains the lab bench's teachers (on ground truth) and warm-starts its students (a short run), and
it is the natural off-policy baseline for distillation: SFT on a dataset is distillation from a teacher
that puts all its mass on the dataset's answer.

    loss = − (1 / #completion tokens) Σ_t log p_θ(x_t | x_<t)     over answer and EOS tokens only

The prompt (and ``<bos>``) carry no loss, and neither does padding.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from ..train.runtime import cpu_threads
from ..train.schedules import SCHEDULES, make_scheduler
from .evaluation import evaluate
from .models import build_model, count_parameters, load_model, save_checkpoint
from .tasks import get_task
from .tokenizer import build_char_tokenizer

__all__ = ["tokenize_for_sft", "train_sft", "train_checkpoint"]

IGNORE_INDEX = -100  # the label value cross-entropy ignores


def tokenize_for_sft(tokenizer, prompts, answers, loss_starts=None):
    """Token ids and labels for ``<bos> prompt answer <eos>``, right-padded; labels are −100 off the answer.

    Right padding during training keeps every sequence at positions 0, 1, 2 … from its ``<bos>``, exactly
    like generation from a left-padded batch, whose position ids count from the first real token.

    Args:
        tokenizer: a tokenizer whose post-processor prepends BOS (e.g. from ``build_char_tokenizer``).
        prompts: list of B prompt strings.
        answers: list of B answer strings (EOS is appended).
        loss_starts: optional list of B ints: no loss on ``answer[:loss_start]`` (e.g. a corrupted prefix).

    Returns:
        dict with ``input_ids`` (B, T), ``attention_mask`` (B, T) and ``labels`` (B, T).

    Example:
        >>> from odistill.bench.tokenizer import build_char_tokenizer
        >>> batch = tokenize_for_sft(build_char_tokenizer("0123456789+="), ["1+2="], ["3"])
        >>> batch["labels"].tolist()  # <bos> 1 + 2 = 3 <eos>: loss only on "3" and <eos>
        [[-100, -100, -100, -100, -100, 8, 2]]
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    loss_starts = loss_starts if loss_starts is not None else [0] * len(prompts)
    rows = []
    for prompt, answer, start in zip(prompts, answers, loss_starts, strict=True):
        prompt_ids = tokenizer(prompt)["input_ids"]
        free_ids = tokenizer(answer[:start], add_special_tokens=False)["input_ids"]
        loss_ids = tokenizer(answer[start:], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt_ids + free_ids + loss_ids
        labels = [IGNORE_INDEX] * (len(prompt_ids) + len(free_ids)) + loss_ids
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])  # (B, T)
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in rows])  # (B, T)
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def completion_cross_entropy(model, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not −100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    shift_logits = logits[:, :-1].float()  # position t predicts token t + 1
    shift_labels = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def train_sft(
    model,
    tokenizer,
    dataset,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    warmup_fraction: float = 0.05,
    schedule: str = "cosine",
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    eval_fn=None,
    eval_every: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``model`` in place on ``dataset`` (columns ``prompt``, ``answer``, optional ``loss_start``).

    AdamW with a linear warm-up then a schedule of :mod:`odistill.train.schedules` (cosine decay to 0
    by default), gradient clipping, one batch of ``batch_size`` rows per step. Batches walk through a
    seeded shuffle of the dataset and reshuffle when they run out (pass ``steps * batch_size`` rows to
    see each row once).

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel``).
        tokenizer: its tokenizer (BOS-prepending, with a pad token).
        dataset: a ``datasets.Dataset`` (or dict of lists) with ``prompt`` and ``answer``.
        steps: optimizer steps.
        lr: peak learning rate.
        batch_size: rows per step.
        seed: seeds the batch order (the model's initialisation is seeded where it is built).
        warmup_fraction: fraction of the steps spent warming the learning rate up from 0.
        schedule: a name of :data:`odistill.train.schedules.SCHEDULES`: ``"cosine"`` (decay to 0 at
            ``steps``), ``"constant"`` (stay at ``lr`` after warm-up) or ``"linear"``.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient-norm clipping.
        eval_fn: optional ``eval_fn(model) -> float`` called every ``eval_every`` steps (and at the end).
        eval_every: 0 to evaluate only at the end (when ``eval_fn`` is given).
        progress: show a tqdm bar.

    Returns:
        dict with ``loss`` (list, one per step), ``evals`` (list of ``(step, value)``), ``seconds``.

    Example:
        >>> from odistill.bench.tasks import get_task, build_char_tokenizer  # doctest: +SKIP
        >>> task = get_task("addition"); tok = build_char_tokenizer(task.symbols)  # doctest: +SKIP
        >>> model = build_model("small", tokenizer=tok)  # doctest: +SKIP
        >>> history = train_sft(model, tok, task.make_dataset(64 * 100), steps=100)  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    prompts, answers = list(dataset["prompt"]), list(dataset["answer"])
    columns = dataset.column_names if hasattr(dataset, "column_names") else list(dataset)
    loss_starts = list(dataset["loss_start"]) if "loss_start" in columns else [0] * len(prompts)
    if not prompts:
        raise ValueError("the dataset is empty")

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    scheduler = make_scheduler(optimizer, schedule, steps, math.ceil(warmup_fraction * steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=generator).tolist()
    cursor = 0
    history: dict = {"loss": [], "evals": []}
    start = time.perf_counter()

    model.train()
    bar = tqdm(range(1, steps + 1), desc="sft", disable=not progress, leave=False)
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(prompts), generator=generator).tolist(), 0
        rows = order[cursor : cursor + batch_size]
        cursor += batch_size
        batch = tokenize_for_sft(
            tokenizer, [prompts[i] for i in rows], [answers[i] for i in rows], [loss_starts[i] for i in rows]
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = completion_cross_entropy(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        history["loss"].append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(history['loss'][-20:]) / 20:.4f}")
        if eval_fn is not None and ((eval_every and step % eval_every == 0) or step == steps):
            model.eval()
            history["evals"].append((step, float(eval_fn(model))))
            model.train()
            if progress:
                bar.write(f"step {step}: eval {history['evals'][-1][1]:.4f}")
    model.eval()
    history["seconds"] = time.perf_counter() - start
    return history


def train_checkpoint(
    task_name: str,
    out_dir: str | Path,
    *,
    student: bool = False,
    seed=None,
    steps=None,
    size=None,
    lr=None,
    eval_n: int = 500,
    threads=None,
    progress: bool = True,
) -> dict:
    """Train a task's teacher (or warm-started student) from scratch with its recipe and save it.

    The recipe (model size, steps, learning rate, batch size, seed) is ``task.teacher_recipe`` or
    ``task.student_recipe``; any argument given here overrides it. The checkpoint is saved in bf16 with
    its tokenizer and an ``odistill.json`` that records the task, the recipe, the training time and the
    held-out scores. Returns that metadata.
    """
    task = get_task(task_name)
    role = "student" if student else "teacher"
    recipe = task.student_recipe if student else task.teacher_recipe
    size = size or recipe.size
    steps = steps or recipe.steps
    lr = lr or recipe.lr
    seed = recipe.seed if seed is None else seed

    tokenizer = build_char_tokenizer(task.symbols)
    model = build_model(size, tokenizer=tokenizer, seed=seed)
    data = task.make_sft_dataset(steps * recipe.batch_size, seed=seed, role=role)
    print(
        f"[train] {task.name} {role}: size {size} ({count_parameters(model):,} parameters), "
        f"{steps} steps × batch {recipe.batch_size}, lr {lr}, seed {seed}",
        file=sys.stderr,
    )
    with cpu_threads(threads, parameters=count_parameters(model)):
        history = train_sft(
            model,
            tokenizer,
            data,
            steps=steps,
            lr=lr,
            batch_size=recipe.batch_size,
            seed=seed,
            schedule=recipe.schedule,
            progress=progress,
        )
    out = save_checkpoint(model, tokenizer, out_dir, dtype=torch.bfloat16)  # score what was saved:
    saved, saved_tokenizer = load_model(out)
    scores = evaluate(saved, saved_tokenizer, task, n=eval_n, seed=0, progress=progress)
    metadata = {
        "task": task.name,
        "task_config": task.config(),
        "role": role,
        "size": size,
        "parameters": count_parameters(model),
        "steps": steps,
        "lr": lr,
        "batch_size": recipe.batch_size,
        "schedule": recipe.schedule,
        "seed": seed,
        "train_seconds": round(history["seconds"], 1),
        "final_loss": round(sum(history["loss"][-20:]) / len(history["loss"][-20:]), 5),
        "eval": {k: v for k, v in scores.items() if k not in ("examples", "seconds")},
        "command": f"odistill train-teacher --task {task.name} --out DIR --seed {seed} --steps {steps}"
        + f" --size {size} --lr {lr}"
        + (" --student" if student else ""),
    }
    save_checkpoint(saved, saved_tokenizer, out, dtype=torch.bfloat16, metadata=metadata)
    return metadata
