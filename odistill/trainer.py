"""distill(): the loop that joins sampler, teacher scorer and loss.

One optimizer step::

    prompts ──► on-policy?  (probability λ, a shared coin)
                 ├─ yes: the student samples completions                 (sampler)
                 └─ no:  dataset completions, or teacher samples (seq_kd)
            ──► the teacher scores every completion token                 (teacher scorer)
            ──► student forward on the same tokens, divergence per token  (loss)
            ──► backward, clip, step

Built on ``accelerate``: device placement, mixed precision, gradient accumulation and
multi-process data parallelism (``torchrun --nproc_per_node 2 script.py`` on CPU or GPU; each
process draws its own slice of the batch, all processes agree on the λ coin).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import DistillConfig
from .divergences import NonFiniteLossError, token_log_probs
from .loss import distillation_loss, sampled_token_loss
from .rollouts import (
    Rollouts,
    completion_hidden,
    completion_logits,
    lm_head_of,
    resolve_special_ids,
    rollouts_from_text,
)
from .sampler import sample
from .teacher import TeacherScorer, check_vocab_compatible

__all__ = ["distill", "DistillResult", "DatasetError", "latest_checkpoint"]


class DatasetError(ValueError):
    """The training data cannot be used (empty, missing a prompt column, no completions for off-policy)."""


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        student: the trained student (unwrapped, on its training device, eval mode).
        history: one dict per optimizer step: ``step, loss, reverse_kl, on_policy, source, tokens,
            tokens_per_s, seconds, lr, grad_norm, completion_length, skipped`` plus ``eval/...`` keys
            at evaluation steps (step 0 is the evaluation before training).
        seconds: wall-clock time of the loop.
        skipped_steps: steps whose loss was not finite and were therefore not applied.
    """

    student: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    skipped_steps: int = 0

    def evals(self) -> list[dict]:
        """The history rows that carry evaluation results."""
        return [row for row in self.history if any(k.startswith("eval/") for k in row)]


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------


def _column_names(dataset) -> list[str]:
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    if len(dataset) and isinstance(dataset[0], dict):
        return list(dataset[0].keys())
    return []


class _PromptSource:
    """Prompts (and reference completions for off-policy batches) drawn from a dataset."""

    def __init__(self, dataset, config: DistillConfig, need_completions: bool):
        if dataset is None or len(dataset) == 0:
            raise DatasetError("the dataset is empty: distillation needs prompts (a 'prompt' column of strings)")
        columns = _column_names(dataset)
        prompt_col = config.prompt_column
        if prompt_col not in columns and not (prompt_col == "prompt" and "messages" in columns):
            raise DatasetError(
                f"the dataset has no {prompt_col!r} column (it has {columns}); add one with the prompt text or chat "
                "messages, or set DistillConfig.prompt_column"
            )
        self.prompts, self.completions = [], []
        use_messages = prompt_col not in columns
        for row in dataset:
            if use_messages:
                msgs = list(row["messages"])
                last_is_answer = msgs and msgs[-1].get("role") == "assistant"
                self.prompts.append(msgs[:-1] if last_is_answer else msgs)
                self.completions.append(msgs[-1]["content"] if last_is_answer else None)
            else:
                self.prompts.append(row[prompt_col])
                self.completions.append(self._completion(row, config, columns))
        if need_completions and any(c is None for c in self.completions):
            raise DatasetError(
                f"off-policy batches (lmbda={config.lmbda} < 1, seq_kd=False) train on the dataset's completions, but "
                f"the dataset has no completion column (it has {columns}): add a 'completion' or 'answer' column, set "
                "DistillConfig.completion_column, use seq_kd=True to sample them from the teacher, or lmbda=1"
            )

    @staticmethod
    def _completion(row, config, columns):
        if config.completion_column is not None:
            if config.completion_column not in columns:
                raise DatasetError(f"completion_column {config.completion_column!r} is not in the dataset ({columns})")
            return row[config.completion_column]
        for name in ("completion", "answer"):
            if name in columns:
                return row[name]
        if "messages" in columns and row["messages"] and row["messages"][-1].get("role") == "assistant":
            return row["messages"][-1]["content"]
        return None

    def __len__(self):
        return len(self.prompts)


# ---------------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------------


def _atomic_save_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write a folder next to ``target`` and rename it into place, so a crash never leaves half a checkpoint."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _save_checkpoint(path: Path, student, tokenizer, optimizer, scheduler, config, step, history, rngs):
    """Everything needed to continue exactly: weights, tokenizer, optimizer, scheduler, RNGs, step, config."""

    def write(tmp: Path):
        student.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.random.get_rng_state(),
                    "python_rngs": {name: r.getstate() for name, r in rngs.items()}, "step": step},
                   tmp / "trainer_state.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}, indent=1))
        config.save(tmp / "distill_config.json")

    _atomic_save_dir(path, write)


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to resume from: ``path`` itself if it is one, else its newest ``checkpoint-*``.

    Raises:
        FileNotFoundError: no checkpoint there (with what was looked for).
    """
    path = Path(path)
    if (path / "trainer_state.pt").is_file():
        return path
    candidates = sorted(p for p in path.glob("checkpoint-*") if (p / "trainer_state.pt").is_file()) if path.is_dir() else []
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint to resume from in {str(path)!r}: expected a folder written by distill() (with "
            "trainer_state.pt) or an output_dir holding checkpoint-NNNNNN folders"
        )
    return candidates[-1]


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------


def _lr_lambda(config: DistillConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return factor


def _make_accelerator(config: DistillConfig):
    from accelerate import Accelerator

    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision=config.mixed_precision)


def distill(student, teacher, tokenizer, dataset, config: DistillConfig | None = None, *,
            eval_fn: Callable[[torch.nn.Module], dict] | None = None, callback: Callable[[dict], None] | None = None,
            resume_from: str | Path | None = None) -> DistillResult:
    """Distil ``teacher`` into ``student`` on the prompts of ``dataset``.

    Args:
        student: a causal LM to train (any ``AutoModelForCausalLM``).
        teacher: a causal LM with the same tokenizer (frozen; put in eval mode).
        tokenizer: the shared tokenizer (needs an EOS token; a pad token is optional).
        dataset: a ``datasets.Dataset`` (or list of dicts) with a ``prompt`` column of strings or chat
            conversations, or a ``messages`` column; off-policy batches without ``seq_kd`` also need a
            completion (``completion`` / ``answer`` column, or a final assistant message).
        config: :class:`~odistill.config.DistillConfig` (default: its defaults).
        eval_fn: ``eval_fn(student) -> dict`` of metrics, called before training, after the last step,
            and every ``config.eval_every`` steps (if > 0); keys are stored as ``eval/<key>``.
        callback: called with each history row as it is produced (for live plots).
        resume_from: a checkpoint folder (or an ``output_dir``: its newest checkpoint) written by an
            earlier run with the same config; training continues after its step, with its weights,
            optimizer, scheduler, random states and history, and reaches the same numbers as a run
            that was never interrupted.

    Checkpoints (``save_every`` > 0) are written atomically to ``output_dir/checkpoint-NNNNNN``. On
    Ctrl-C (KeyboardInterrupt) with an ``output_dir``, a checkpoint of the last finished step is
    written before the exception propagates, so nothing trained is lost.

    Returns:
        :class:`DistillResult` with the trained student and the per-step history.

    Example:
        >>> result = distill(student, teacher, tok, task.make_dataset(2000, seed=0),  # doctest: +SKIP
        ...                  DistillConfig(lmbda=1.0, beta=1.0, steps=100))
        >>> result.history[-1]["reverse_kl"]  # doctest: +SKIP
    """
    config = (config or DistillConfig()).validate()
    data = _PromptSource(dataset, config, need_completions=config.lmbda < 1 and not config.seq_kd)
    resolve_special_ids(tokenizer)  # clear error now if there is no EOS
    vocab = check_vocab_compatible(student, teacher, tokenizer)

    accelerator = _make_accelerator(config)
    device = accelerator.device
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(config.seed + rank)
    coin = random.Random(config.seed)  # identical on every process: all agree on on/off-policy
    picker = random.Random(config.seed + 1)  # identical on every process: disjoint slices of one global batch

    teacher_mode = "sampled" if config.estimator == "sampled" else ("topk" if config.teacher_top_k else "full")
    if config.fused_lm_head:
        teacher_mode = "hidden"
        lm_head_of(student, vocab)  # a clear error before any work if the student's logits are not hidden @ W.T
    scorer = TeacherScorer(teacher, mode=teacher_mode, k=config.teacher_top_k or 1,
                           device=config.teacher_device or device,
                           micro_batch_size=config.teacher_micro_batch_size, vocab_size=vocab)

    student.to(device)
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters (every requires_grad is False)")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    # the scheduler stays unprepared: accelerate would step it once per process
    model, optimizer = accelerator.prepare(student, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    history: list[dict] = []
    skipped = 0
    first_step = 1
    rngs = {"coin": coin, "picker": picker}
    if resume_from is not None:
        first_step, history = _restore(latest_checkpoint(resume_from), unwrapped, optimizer, scheduler, rngs, config)
        skipped = sum(1 for row in history if row.get("skipped"))

    def run_eval(step: int, row: dict):
        if eval_fn is None or not accelerator.is_main_process:
            return
        was_training = unwrapped.training
        unwrapped.eval()
        with torch.no_grad():
            metrics = eval_fn(unwrapped)
        unwrapped.train(was_training)
        row.update({f"eval/{k}": v for k, v in metrics.items()})

    if eval_fn is not None and first_step == 1:
        row = {"step": 0}
        run_eval(0, row)
        history.append(row)
        if callback:
            callback(row)

    def _train_step(step: int) -> int:
        """One optimizer step (grad_accum micro-batches); returns 1 if the update was skipped."""
        t0 = time.perf_counter()
        row = {"step": step, "loss": 0.0, "reverse_kl": 0.0, "tokens": 0, "completion_length": 0.0}
        finite = True
        was_skipped = 0
        for micro in range(config.grad_accum):
            on_policy = coin.random() < config.lmbda
            global_batch = [picker.randrange(len(data)) for _ in range(config.batch_size * world)]
            idx = global_batch[rank * config.batch_size : (rank + 1) * config.batch_size]
            prompts = [data.prompts[i] for i in idx]
            sample_seed = config.seed * 1_000_003 + (step * config.grad_accum + micro) * world + rank
            if on_policy:
                rollouts = sample(unwrapped, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                  temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                  seed=sample_seed, source="student", backend=config.sampler_backend)
            elif config.seq_kd:
                rollouts = sample(scorer.model, tokenizer, prompts, max_new_tokens=config.max_new_tokens,
                                  temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                  seed=sample_seed, source="teacher", backend=config.sampler_backend).to(device)
            else:
                rollouts = rollouts_from_text(tokenizer, prompts, [data.completions[i] for i in idx]).to(device)
            last = micro == config.grad_accum - 1
            # gradients are all-reduced across processes only on the last micro-batch
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                try:
                    loss, rkl = _loss(model, rollouts, scorer, config, vocab)
                except NonFiniteLossError:  # NaN logits (e.g. diverged weights): this step is skipped
                    loss, rkl = torch.tensor(float("nan"), device=device), float("nan")
                ok = bool(torch.isfinite(loss))
                # a zero, graph-connected loss keeps every process in the gradient all-reduce
                safe = loss if ok else sum((p * 0).sum() for p in params)
                accelerator.backward(safe / config.grad_accum)
            finite = finite and ok
            row["on_policy"], row["source"] = on_policy, rollouts.source
            row["loss"] += loss.item() / config.grad_accum
            row["reverse_kl"] += rkl / config.grad_accum
            row["tokens"] += rollouts.num_completion_tokens
            row["completion_length"] += rollouts.num_completion_tokens / len(rollouts) / config.grad_accum
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm or float("inf"))
        # every process must reach the same decision: apply only if all losses and the gradient are finite
        finite_everywhere = accelerator.reduce(torch.tensor(float(finite), device=device), reduction="sum")
        applied = float(finite_everywhere) == world and bool(torch.isfinite(grad_norm))
        if applied:
            optimizer.step()
            scheduler.step()
        else:
            was_skipped = 1
            warnings.warn(f"step {step}: the loss or its gradient is not finite; the update was skipped "
                          "(not applied to the weights)", RuntimeWarning, stacklevel=2)
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        row.update(grad_norm=float(grad_norm), skipped=not applied, seconds=dt,
                   tokens_per_s=row["tokens"] / dt if dt > 0 else 0.0, lr=scheduler.get_last_lr()[0])
        if eval_fn is not None and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
            run_eval(step, row)
        history.append(row)
        if callback:
            callback(row)
        if step % config.log_every == 0 or step == config.steps:
            bar.set_postfix(loss=f"{row['loss']:.3f}", rkl=f"{row['reverse_kl']:.3f}")
        if config.save_every and step % config.save_every == 0 and accelerator.is_main_process:
            _save_checkpoint(Path(config.output_dir) / f"checkpoint-{step:06d}", unwrapped, tokenizer, optimizer,
                             scheduler, config, step, history, rngs)
        return was_skipped

    from tqdm.auto import tqdm

    bar = tqdm(range(first_step, config.steps + 1), desc=config.describe(), initial=first_step - 1, total=config.steps,
               disable=not (config.progress and accelerator.is_main_process))
    start = time.perf_counter()
    step = first_step - 1
    try:
        for step in bar:
            skipped += _train_step(step)
    except KeyboardInterrupt:
        done = history[-1]["step"] if history and "loss" in history[-1] else first_step - 1  # last finished step
        if config.output_dir and accelerator.is_main_process and done >= first_step:
            target = Path(config.output_dir) / f"checkpoint-{done:06d}"
            _save_checkpoint(target, unwrapped, tokenizer, optimizer, scheduler, config, done, history, rngs)
            warnings.warn(f"interrupted: saved a checkpoint of step {done} to {target}; continue with "
                          f"resume_from={str(config.output_dir)!r} (odistill distill --resume)", stacklevel=2)
        raise
    seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()
    unwrapped.eval()
    return DistillResult(student=unwrapped, history=history, seconds=seconds, skipped_steps=skipped)


def _restore(path: Path, student, optimizer, scheduler, rngs, config):
    """Load a checkpoint into the live objects; return (first step to run, history so far)."""
    from safetensors.torch import load_file

    state = torch.load(path / "trainer_state.pt", weights_only=False)
    saved = DistillConfig.load(path / "distill_config.json")
    if saved.seed != config.seed or saved.lmbda != config.lmbda or saved.batch_size != config.batch_size:
        warnings.warn(f"resuming {path} with a config that differs from the saved one (seed/lmbda/batch_size); "
                      "the run will not reproduce an uninterrupted one", stacklevel=3)
    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(load_file(file))
    missing, unexpected = student.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings are saved once
    if real_missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this student: missing {real_missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.random.set_rng_state(state["torch_rng"])
    for name, rng in rngs.items():
        rng.setstate(state["python_rngs"][name])
    history = json.loads((path / "trainer_state.json").read_text())["history"]
    return int(state["step"]) + 1, history


def _fused_loss(model, rollouts: Rollouts, scores, scorer: TeacherScorer, config: DistillConfig, vocab: int):
    """The "full" loss from hidden states and LM heads (no (B, T, V) logits) and the k1 reverse-KL metric."""
    from .chunked import fused_linear_divergence

    hidden = completion_hidden(model, rollouts)  # (B, T, H_S), with gradients (through the DDP wrapper, if any)
    weight, bias = lm_head_of(model, vocab)
    t_weight, t_bias = scorer.lm_head()
    device = hidden.device
    kind, beta = {"forward_kl": ("forward_kl", None), "reverse_kl": ("reverse_kl", None)}.get(
        config.divergence, ("generalized_jsd", float(config.beta)))
    mask = rollouts.completion_mask
    loss, student_lp, teacher_lp = fused_linear_divergence(
        kind, hidden, weight, scores.hidden.to(device), t_weight.to(device), mask, student_bias=bias,
        teacher_bias=None if t_bias is None else t_bias.to(device), weight=beta, temperature=config.loss_temperature,
        token_ids=rollouts.completion_ids.clamp_max(vocab - 1))
    rkl = float(((student_lp - teacher_lp) * mask).sum() / mask.sum().clamp_min(1))
    return loss, rkl


def _loss(model, rollouts: Rollouts, scorer: TeacherScorer, config: DistillConfig, vocab: int):
    """The training loss of one batch and the per-token reverse-KL estimate (k1, mean over tokens)."""
    scores = scorer(rollouts)
    if scores.mode == "hidden":
        return _fused_loss(model, rollouts, scores, scorer, config, vocab)
    logits = completion_logits(model, rollouts, vocab_size=vocab)  # (B, T, V), with gradients
    mask = rollouts.completion_mask
    tokens = rollouts.completion_ids.clamp_max(vocab - 1)
    if config.estimator == "sampled":  # the loss needs log p_S(x_t) with its gradient
        student_lp = token_log_probs(logits, tokens)  # (B, T)
    else:  # only the metric does: no graph
        with torch.no_grad():
            student_lp = token_log_probs(logits, tokens)
    n = mask.sum().clamp_min(1)
    rkl = float(((student_lp.detach() - scores.token_logprobs) * mask).sum() / n)
    if config.estimator == "sampled":
        loss = sampled_token_loss(student_lp, scores.token_logprobs, rollouts.sampling_logprobs, mask)
    else:
        divergence = "jsd" if config.divergence == "jsd" else config.divergence
        loss = distillation_loss(logits, scores, mask, divergence=divergence, beta=config.beta,
                                 temperature=config.loss_temperature)
    return loss, rkl
