"""distill(): the loop that joins sampler, teacher and loss.

One optimizer step::

    prompts ──► on-policy?  (probability λ, a shared coin)
                 ├─ yes: the student samples completions                 make_rollouts
                 └─ no:  dataset completions, or teacher samples (seq_kd)
            (every micro-batch of the step first)
            ──► count the step's completion tokens (all processes)        count_tokens
            ──► the teacher scores every completion token                 score
            ──► student forward on the same tokens, divergence per token  loss_and_metrics
            ──► backward of Σ loss / step tokens (each micro-batch)       backward
            ──► clip, step                                                apply_update
            ──► history row, evaluation, loggers, checkpoint              maybe_eval, log, maybe_checkpoint

The steps live in :mod:`odistill.train.steps`; this module sets them up and runs them. Built on
``accelerate``: device placement, mixed precision, gradient accumulation and multi-process data
parallelism (``torchrun --nproc_per_node 2 script.py`` on CPU or GPU).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.forward import disable_dropout, lm_head_of
from ..core.remote import TeacherUnavailableError
from ..core.rollouts import resolve_special_ids
from ..core.teacher import TeacherScorer, check_vocab_compatible, vocab_size_of
from ..core.vllm_sampler import check_vllm_available
from .checkpoint import (
    latest_checkpoint,
    load_training_checkpoint,
    prune_checkpoints,
    save_training_checkpoint,
)
from .config import ConfigError, DistillConfig
from .data import PromptSource
from .loggers import make_loggers
from .lora import apply_lora, lora_wraps_lm_head
from .runtime import check_launch, cpu_threads, make_accelerator
from .schedules import make_scheduler
from .sharding import (
    fsdp_settings,
    full_optimizer_state,
    full_state_dict,
    shard_model,
)
from .steps import (
    TrainState,
    apply_update,
    backward,
    count_tokens,
    gradient_sync,
    loss_and_metrics,
    make_rollouts,
    sample_table,
    score,
    teacher_mode,
)

__all__ = ["distill", "DistillResult", "SAMPLES_PER_TABLE"]

#: How many completions of a batch a history row's ``samples`` table holds (``log_samples_every``).
SAMPLES_PER_TABLE = 4


@dataclass
class DistillResult:
    """What :func:`distill` returns.

    Attributes:
        student: the trained student (unwrapped, on its training device, eval mode).
        history: one dict per optimizer step: ``step, loss, reverse_kl, on_policy, source, tokens,
            tokens_per_s, seconds, lr, grad_norm, completion_length, clipped_ratio, lmbda, skipped``
            (``clipped_ratio``: the fraction of completions cut at ``max_new_tokens`` before a stop token;
            ``lmbda``: the step's λ, see ``lmbda_schedule``) plus ``eval/...`` keys
            at evaluation steps (step 0 is the evaluation before training).
        seconds: wall-clock time of the loop.
        skipped_steps: steps whose loss was not finite and were therefore not applied.
        threads: the torch CPU threads the loop ran with (``DistillConfig.threads`` or the policy of
            :mod:`odistill.train.runtime`); None when it ran on a GPU.
    """

    student: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    skipped_steps: int = 0
    threads: int | None = None

    def evals(self) -> list[dict]:
        """The history rows that carry evaluation results."""
        return [row for row in self.history if any(k.startswith("eval/") for k in row)]


def distill(
    student,
    teacher,
    tokenizer,
    dataset,
    config: DistillConfig | None = None,
    *,
    eval_fn: Callable[[torch.nn.Module], dict] | None = None,
    callback: Callable[[dict], None] | None = None,
    resume_from: str | Path | None = None,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` on the prompts of ``dataset``.

    Args:
        student: a causal LM to train (any ``AutoModelForCausalLM``).
        teacher: a causal LM with the same tokenizer (frozen; put in eval mode), or any
            :class:`~odistill.core.teacher.Teacher` (an object with ``vocab_size`` and ``score``).
        tokenizer: the shared tokenizer (needs an EOS token; a pad token is optional).
        dataset: a ``datasets.Dataset`` (or list of dicts) with a ``prompt`` column of strings or chat
            conversations, or a ``messages`` column; off-policy batches without ``seq_kd`` also need a
            completion (``completion`` / ``answer`` column, or a final assistant message).
        config: :class:`~odistill.train.config.DistillConfig` (default: its defaults).
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
    state = setup(student, teacher, tokenizer, dataset, config, resume_from)
    if state.device.type != "cpu":
        return _run(state, eval_fn, callback, threads=None)
    size = sum(p.numel() for p in state.student.parameters()) + _teacher_parameters(state.teacher)
    with cpu_threads(config.threads, parameters=size) as threads:
        return _run(state, eval_fn, callback, threads=threads)


def _teacher_parameters(teacher) -> int:
    model = getattr(teacher, "model", None)
    return sum(p.numel() for p in model.parameters()) if isinstance(model, torch.nn.Module) else 0


def _run(state: TrainState, eval_fn, callback, *, threads: int | None) -> DistillResult:
    """The loop of :func:`distill` after :func:`setup`, with its loggers; ``threads`` is reported."""
    config = state.config
    loggers = make_loggers(config, callback, state.accelerator.is_main_process, threads=threads)
    for logger in loggers:
        logger.start(config, state.first_step)
    try:
        if state.first_step == 1 and eval_fn is not None:  # the evaluation before training is row 0
            log(state, maybe_eval(state, {"step": 0}, eval_fn), loggers)
        start = time.perf_counter()
        for step in range(state.first_step, config.steps + 1):
            state.mark_step_start(step)
            row = train_step(state, step)
            state.history.append(row)  # the update is applied: a checkpoint taken from here on includes it
            log(state, maybe_eval(state, row, eval_fn), loggers, record=False)
            maybe_checkpoint(state, step)
    except KeyboardInterrupt:
        checkpoint_on_interrupt(state)
        raise
    except TeacherUnavailableError as error:  # the teacher's server is down: keep what was trained
        checkpoint_on_interrupt(state, reason=f"the teacher at {error.url} is unavailable")
        raise
    finally:
        for logger in loggers:
            logger.close()
    seconds = time.perf_counter() - start
    state.accelerator.wait_for_everyone()
    state.student.eval()
    return DistillResult(
        student=state.student,
        history=state.history,
        seconds=seconds,
        skipped_steps=state.skipped_steps,
        threads=threads,
    )


def setup(student, teacher, tokenizer, dataset, config: DistillConfig, resume_from=None) -> TrainState:
    """Check the inputs, place the models, build the optimizer and schedule, and resume if asked."""
    data = PromptSource(dataset, config, need_completions=config.min_lmbda < 1 and not config.seq_kd)
    resolve_special_ids(tokenizer, student)  # clear error now if there is no EOS
    vocab = check_vocab_compatible(student, teacher, tokenizer)
    if callable(getattr(teacher, "check_tokenizer", None)):  # e.g. a served teacher: same token ids?
        teacher.check_tokenizer(tokenizer)
    accelerator = make_accelerator(config.device, config.mixed_precision)
    check_launch(accelerator)
    sharding = fsdp_settings(config, accelerator)
    if config.sampler_backend == "vllm":
        if config.lora_r:
            raise ConfigError(
                "sampler_backend='vllm' syncs the student's plain weights into its engine; a LoRA student "
                "would need its adapters merged every step: use sampler_backend='hf' with lora_r"
            )
        check_vllm_available()  # installed, and a GPU: else a clear error before any work
    torch.manual_seed(config.seed + accelerator.process_index)
    teacher = _as_teacher(teacher, config, vocab, accelerator.device)
    if sharding is not None and sharding.shard_teacher:
        if not isinstance(getattr(teacher, "model", None), torch.nn.Module):
            raise ConfigError(
                f"fsdp_shard_teacher=True shards a local teacher model; {type(teacher).__name__} holds none"
            )
        shard_model(teacher.model, sharding, accelerator.device, config.mixed_precision)
    if config.fused_lm_head:
        lm_head_of(
            student, vocab
        )  # a clear error before any work if the student's logits are not hidden @ W.T
    student = apply_lora(student, config)
    if config.fused_lm_head and lora_wraps_lm_head(student):
        raise ConfigError(
            "fused_lm_head=True reads the LM head's weight directly and cannot use the LoRA adapter on it: "
            "leave the LM head out of the adapters, or set fused_lm_head=False"
        )
    student.to(accelerator.device)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    if config.disable_dropout:
        disable_dropout(student)
    student.train()
    if sharding is not None:  # in place: the parameters become this process's shards (DTensors)
        shard_model(student, sharding, accelerator.device, config.mixed_precision)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the student has no trainable parameters (every requires_grad is False)")
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, weight_decay=config.weight_decay, betas=config.adam_betas, eps=config.adam_eps
    )
    scheduler = make_scheduler(optimizer, config.lr_schedule, config.steps, config.warmup_steps)
    # the scheduler stays unprepared: accelerate would step it once per process
    if sharding is None:
        model, optimizer = accelerator.prepare(student, optimizer)
    else:  # already sharded: accelerate must not wrap it again (in DDP)
        model, optimizer = student, accelerator.prepare(optimizer)
    state = TrainState(
        config=config,
        accelerator=accelerator,
        model=model,
        student=accelerator.unwrap_model(model),
        teacher=teacher,
        tokenizer=tokenizer,
        data=data,
        vocab=vocab,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        coin=random.Random(config.seed),  # identical on every process: all agree on on/off-policy
        picker=random.Random(config.seed + 1),  # identical everywhere: disjoint slices of one batch
        sharded=sharding is not None,
    )
    if resume_from is not None:
        state.first_step, state.history = load_training_checkpoint(
            latest_checkpoint(resume_from),
            student=state.student,
            optimizer=optimizer,
            scheduler=scheduler,
            rngs=state.rngs,
            config=config,
        )
    return state


def enable_gradient_checkpointing(student) -> None:
    """Turn on the student's activation checkpointing for its training forward passes.

    Hugging Face models recompute each layer in the backward pass (non-reentrant checkpoints, which work
    with inputs that need no gradient and with ``torch.no_grad`` regions). The checkpoints are active only
    in train mode: :func:`odistill.core.sampler.sample` runs the model in eval mode, so sampling keeps
    its KV cache (TRL's trainers turn the cache off while generating instead).
    """
    enable = getattr(student, "activation_checkpointing_enable", None)  # transformers >= 5.x
    kwargs_name = "activation_checkpointing_kwargs"
    if not callable(enable):
        enable, kwargs_name = (
            getattr(student, "gradient_checkpointing_enable", None),
            "gradient_checkpointing_kwargs",
        )
    if not callable(enable):
        raise ConfigError(
            "gradient_checkpointing=True needs a model with gradient_checkpointing_enable() (any Hugging "
            f"Face PreTrainedModel); {type(student).__name__} has none"
        )
    if not getattr(student, "supports_gradient_checkpointing", True):
        raise ConfigError(f"{type(student).__name__} does not support gradient checkpointing")
    enable(**{kwargs_name: {"use_reentrant": False}})


def _as_teacher(teacher, config: DistillConfig, vocab: int, device):
    """A local model becomes a :class:`TeacherScorer`; anything else must already be a Teacher."""
    mode = teacher_mode(config)
    if isinstance(teacher, torch.nn.Module):
        return TeacherScorer(
            teacher,
            mode=mode,
            k=config.teacher_top_k or 1,
            device=config.teacher_device or device,
            micro_batch_size=config.teacher_micro_batch_size,
            vocab_size=vocab,
        )
    if not callable(getattr(teacher, "score", None)):
        raise TypeError(
            f"teacher must be a torch.nn.Module or a Teacher (with vocab_size and score()), got "
            f"{type(teacher).__name__}"
        )
    size = vocab_size_of(teacher)
    if size != vocab:  # the teacher pads its LM head beyond the shared vocabulary
        restrict = getattr(teacher, "restrict_vocab", None)
        if not callable(restrict):
            raise ConfigError(
                f"{type(teacher).__name__} scores V={size} logits, but it shares only the first {vocab} with "
                "the student: give it a restrict_vocab(n) method that scores over the first n logits"
            )
        restrict(vocab)
    modes = getattr(teacher, "modes", None)
    if modes is not None and mode not in modes:
        raise ConfigError(
            f"{type(teacher).__name__} returns {tuple(modes)} scores, but this config needs {mode!r} ones: "
            "use estimator='sampled' (one log-prob per token), or the full estimator on the teacher's top k "
            "(teacher_top_k=k)"
        )
    needs = {"sample": config.seq_kd and config.min_lmbda < 1, "lm_head": mode == "hidden"}
    for member, needed in needs.items():
        if needed and not callable(getattr(teacher, member, None)):
            raise TypeError(
                f"{type(teacher).__name__} has no {member}(), which this config needs "
                f"({'seq_kd=True' if member == 'sample' else 'fused_lm_head=True'})"
            )
    return teacher


def train_step(state: TrainState, step: int) -> dict:
    """One optimizer step over ``grad_accum`` micro-batches; returns its history row."""
    t0 = time.perf_counter()
    row, finite = accumulate_gradients(state, step)
    applied, grad_norm = apply_update(state, finite, step)
    seconds = time.perf_counter() - t0
    row.update(
        grad_norm=grad_norm,
        skipped=not applied,
        seconds=seconds,
        tokens_per_s=row["tokens"] / seconds if seconds > 0 else 0.0,
        lr=state.scheduler.get_last_lr()[0],
    )
    return row


def accumulate_gradients(state: TrainState, step: int) -> tuple[dict, bool]:
    """The gradient of one optimizer step, accumulated over ``grad_accum`` micro-batches (not applied).

    Every micro-batch's rollouts are made first, so that the loss can be normalised by the completion
    tokens of the whole step (on every process): a token weighs the same in any micro-batch. Returns the
    step's history row so far (``loss`` and ``reverse_kl`` are means over this process's tokens) and
    whether every loss was finite.
    """
    config = state.config
    batches = [make_rollouts(state, step, micro) for micro in range(config.grad_accum)]
    step_tokens = count_tokens(state, batches)
    local_tokens = max(sum(r.num_completion_tokens for r in batches), 1)
    row = {"step": step, "loss": 0.0, "reverse_kl": 0.0, "tokens": 0, "completion_length": 0.0}
    row["lmbda"] = config.lmbda_at(step)
    rows = sum(len(r) for r in batches)
    row["clipped_ratio"] = sum(r.num_clipped for r in batches) / rows
    warn_if_clipped(state, step, row["clipped_ratio"], rows)
    finite = True
    for micro, rollouts in enumerate(batches):
        scores = score(state, rollouts)
        with gradient_sync(state, last=micro == config.grad_accum - 1):
            loss, metrics = loss_and_metrics(state, rollouts, scores)
            finite &= backward(state, loss, step_tokens)
        n = rollouts.num_completion_tokens
        every = config.log_samples_every
        if micro == 0 and every and step % every == 0 and "token_reverse_kl" in metrics:
            row["samples"] = sample_table(rollouts, metrics["token_reverse_kl"], SAMPLES_PER_TABLE)
        row["on_policy"], row["source"] = rollouts.source == "student", rollouts.source
        row["loss"] += loss.item() / local_tokens
        row["reverse_kl"] += metrics["reverse_kl"] * n / local_tokens
        row["tokens"] += n
        row["completion_length"] += n / len(rollouts) / config.grad_accum
    return row, finite


def warn_if_clipped(state: TrainState, step: int, ratio: float, rows: int) -> None:
    """Warn once per run when more than half of a step's completions were cut at ``max_new_tokens``."""
    if ratio > 0.5 and not state.warned_clipped:
        state.warned_clipped = True
        warnings.warn(
            f"step {step}: {round(ratio * rows)} of {rows} completions ({ratio:.0%}) reached "
            f"max_new_tokens={state.config.max_new_tokens} without a stop token; they are scored as cut, "
            "not as finished. Raise max_new_tokens if the task's answers are longer (odistill's default "
            "is 16, TRL's GKDConfig 128); 'clipped_ratio' in the history tracks it (warned once per run)",
            RuntimeWarning,
            stacklevel=3,
        )


def maybe_eval(state: TrainState, row: dict, eval_fn) -> dict:
    """Evaluate when due (before training, every ``eval_every`` steps, after the last step) and add the
    metrics to ``row`` as ``eval/<key>`` (the main process; with FSDP every process, since the sharded
    student's forward pass needs them all); returns ``row``."""
    config, step = state.config, row["step"]
    due = step in (0, config.steps) or (config.eval_every and step % config.eval_every == 0)
    # a sharded student's forward pass needs every process: then all of them evaluate
    if eval_fn is not None and due and (state.accelerator.is_main_process or state.sharded):
        was_training = state.student.training
        state.student.eval()
        with torch.no_grad(), state.sampling_together():
            metrics = eval_fn(state.student)
        state.student.train(was_training)
        row.update({f"eval/{k}": v for k, v in metrics.items()})
    return row


def log(state: TrainState, row: dict, loggers, *, record: bool = True) -> None:
    """Append ``row`` to the history (unless it is there already) and hand it to every logger."""
    if record:
        state.history.append(row)
    for logger in loggers:
        logger.log(row)


def maybe_checkpoint(state: TrainState, step: int) -> None:
    """Write ``output_dir/checkpoint-NNNNNN`` every ``save_every`` steps (the main process writes; with
    FSDP every process first takes part in gathering the full state)."""
    config = state.config
    writes = state.accelerator.is_main_process or state.sharded
    if config.save_every and step % config.save_every == 0 and writes:
        _save(state, step)


def checkpoint_on_interrupt(state: TrainState, reason: str = "interrupted") -> None:
    """On Ctrl-C or a teacher that stays unavailable: save the last finished step (when there is an
    ``output_dir``) and say how to resume. A step that was cut half-way is not in the checkpoint; its
    random states are, so the resumed run repeats it exactly."""
    done = (
        state.history[-1]["step"] if state.history and "loss" in state.history[-1] else state.first_step - 1
    )
    if state.sharded and state.config.output_dir and done >= state.first_step:
        # gathering a sharded state needs every process, and this failure may have reached only this one
        warnings.warn(
            f"{reason}: with FSDP no checkpoint is written on a failure (gathering the sharded state needs "
            "every process); resume from the newest periodic checkpoint in "
            f"{str(state.config.output_dir)!r} (save_every)",
            stacklevel=3,
        )
        return
    if state.config.output_dir and state.accelerator.is_main_process and done >= state.first_step:
        state.rewind_to_step_start(done + 1)
        target = _save(state, done)
        warnings.warn(
            f"{reason}: saved a checkpoint of step {done} to {target}; continue with "
            f"resume_from={str(state.config.output_dir)!r} (odistill distill --resume)",
            stacklevel=3,
        )


def _save(state: TrainState, step: int) -> Path:
    """Write the checkpoint of ``step``, then drop the oldest beyond ``save_total_limit``. With FSDP this
    runs on every process: all gather the full weights and optimizer state, the main process writes."""
    path = Path(state.config.output_dir) / f"checkpoint-{step:06d}"
    if state.sharded:
        weights = full_state_dict(state.student)
        optimizer_state = full_optimizer_state(state.student, state.optimizer)
        if not state.accelerator.is_main_process:
            state.accelerator.wait_for_everyone()
            return path
    else:
        weights = optimizer_state = None
    save_training_checkpoint(
        path,
        student=state.student,
        weights=weights,
        optimizer_state=optimizer_state,
        tokenizer=state.tokenizer,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        config=state.config,
        step=step,
        history=state.history,
        rngs=state.rngs,
    )
    if state.config.save_total_limit is not None:
        prune_checkpoints(state.config.output_dir, state.config.save_total_limit)
    if state.sharded:
        state.accelerator.wait_for_everyone()
    return path
