"""The named steps of one optimizer step of :func:`odistill.distill`, and the state they share::

    make_rollouts                                              every micro-batch of the step, first
    count_tokens                                               completion tokens of the whole step
    score ─► [loss_and_metrics ─► backward]                    once per micro-batch ([…]: in gradient_sync)
    apply_update                                               once per optimizer step

The loss of a step is the **sum over every counted completion token of the step** (all micro-batches,
all processes) **divided by their number**, so a token weighs the same whichever micro-batch or process
it is in (TRL's trainers normalise the same way since their fix of per-micro-batch means, issue #4719).

Each step is a plain function of a :class:`TrainState`; :mod:`odistill.train.trainer` calls them in
order. They run on every process: each process draws its own slice of one global batch, and all agree
on the λ coin.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass, field

import torch

from ..core.divergences import get_divergence
from ..core.forward import completion_hidden, completion_logits, lm_head_of
from ..core.fused import fused_linear_divergence
from ..core.loss import distillation_loss, sampled_token_loss
from ..core.rollouts import Rollouts, rollouts_from_text
from ..core.sampler import BACKENDS, sample, stop_together
from ..core.teacher import Teacher, TeacherScores
from ..core.tensor_ops import NonFiniteLossError, token_log_probs
from .config import DistillConfig
from .data import PromptSource
from .sharding import gradient_sync_fsdp, total_norm

__all__ = [
    "TrainState",
    "teacher_mode",
    "make_rollouts",
    "score",
    "count_tokens",
    "loss_and_metrics",
    "backward",
    "apply_update",
]


@dataclass
class TrainState:
    """Everything the steps share: the models, the optimizer, the data, the random streams, the history.

    Attributes:
        model: the student as prepared by accelerate (a DDP wrapper with several processes): run
            forward passes through it so gradients are synchronised.
        student: the same student, unwrapped (sampling, checkpoints, evaluation).
        teacher: a :class:`~odistill.core.teacher.Teacher` (the local one wraps a model).
        coin: the λ coin, identical on every process.
        picker: draws the global batch's prompt indices, identical on every process.
        step_start: ``(step, random states)`` taken as that step began (:meth:`mark_step_start`), so
            that a checkpoint written when the step fails half-way holds the states that re-run it.
    """

    config: DistillConfig
    accelerator: object
    model: torch.nn.Module
    student: torch.nn.Module
    teacher: Teacher
    tokenizer: object
    data: PromptSource
    vocab: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    coin: random.Random
    picker: random.Random
    history: list[dict] = field(default_factory=list)
    first_step: int = 1
    warned_clipped: bool = False
    step_start: tuple | None = None
    sharded: bool = False

    def sampling_together(self):
        """The context of anything that runs the models' forward passes a data-dependent number of times
        (sampling, evaluation): with FSDP every process keeps calling the model until all are done
        (:func:`odistill.core.sampler.stop_together`); otherwise nothing."""
        if not self.sharded or self.accelerator.num_processes == 1:
            return contextlib.nullcontext()
        world = self.accelerator.num_processes

        def everyone_finished(mine: bool) -> bool:
            done = self.accelerator.reduce(torch.tensor(float(mine), device=self.device), reduction="sum")
            return float(done) == world

        return stop_together(everyone_finished)

    def mark_step_start(self, step: int) -> None:
        """Remember the random states with which ``step`` begins."""
        states = {name: r.getstate() for name, r in self.rngs.items()}
        self.step_start = (step, states, torch.random.get_rng_state())

    def rewind_to_step_start(self, step: int) -> None:
        """Put back the random states with which ``step`` began (when it was marked): after a failure in
        the middle of ``step``, a checkpoint then re-runs it exactly."""
        if self.step_start is None or self.step_start[0] != step:
            return
        _, states, torch_state = self.step_start
        for name, r in self.rngs.items():
            r.setstate(states[name])
        torch.random.set_rng_state(torch_state)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rngs(self) -> dict[str, random.Random]:
        """The Python random streams a checkpoint saves and restores."""
        return {"coin": self.coin, "picker": self.picker}

    @property
    def skipped_steps(self) -> int:
        return sum(1 for row in self.history if row.get("skipped"))


def teacher_mode(config: DistillConfig) -> str:
    """What the teacher is asked for: ``sampled`` (sampled estimator), ``hidden`` (fused LM head),
    ``topk`` (``teacher_top_k``) or ``full``."""
    if config.estimator == "sampled":
        return "sampled"
    if config.fused_lm_head:
        return "hidden"
    return "topk" if config.teacher_top_k else "full"


def make_rollouts(state: TrainState, step: int, micro: int) -> Rollouts:
    """This process's batch of one micro-step: student samples with probability λ, else off-policy data.

    Sampled batches (the student's, or the teacher's with ``seq_kd``) hold ``num_generations``
    completions of each of the ``batch_size`` prompts, prompt-major; a dataset batch holds each prompt's
    one reference completion."""
    config, world, rank = state.config, state.accelerator.num_processes, state.accelerator.process_index
    on_policy = state.coin.random() < config.lmbda_at(step)
    global_batch = [state.picker.randrange(len(state.data)) for _ in range(config.batch_size * world)]
    prompts, completions = state.data.batch(
        global_batch[rank * config.batch_size : (rank + 1) * config.batch_size]
    )
    sampling = dict(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        n=config.num_generations,
        backend=config.sampler_backend,
        max_prompt_length=config.max_prompt_length,
        seed=config.seed * 1_000_003 + (step * config.grad_accum + micro) * world + rank,
    )
    if on_policy:
        with state.sampling_together():
            return sample(state.student, state.tokenizer, prompts, source="student", **sampling)
    if config.seq_kd:
        with state.sampling_together():
            return state.teacher.sample(state.tokenizer, prompts, **sampling).to(state.device)
    return rollouts_from_text(
        state.tokenizer, prompts, completions, max_prompt_length=config.max_prompt_length
    ).to(state.device)


def score(state: TrainState, rollouts: Rollouts) -> TeacherScores:
    """The teacher's scores of every completion token, in the mode the loss needs."""
    return state.teacher.score(rollouts, teacher_mode(state.config), k=state.config.teacher_top_k)


def sample_table(rollouts: Rollouts, token_reverse_kl: torch.Tensor, n: int) -> list[dict]:
    """The first ``n`` rows of a batch for a tracker's table: prompt, completion, the mean per-token
    reverse KL over the completion and each token's value."""
    mask = rollouts.completion_mask
    rows = []
    for b in range(min(n, len(rollouts))):
        values = token_reverse_kl[b][mask[b]].tolist()
        rows.append(
            {
                "prompt": rollouts.prompts[b] if rollouts.prompts else "",
                "completion": rollouts.texts[b] if rollouts.texts else "",
                "reverse_kl": sum(values) / max(len(values), 1),
                "token_reverse_kl": [round(v, 5) for v in values],
            }
        )
    return rows


def count_tokens(state: TrainState, batches: list[Rollouts]) -> int:
    """The number of counted completion tokens of one optimizer step: every micro-batch of every process
    (an all-reduce when there are several processes)."""
    local = sum(rollouts.num_completion_tokens for rollouts in batches)
    if state.accelerator.num_processes == 1:
        return local
    total = state.accelerator.reduce(torch.tensor(local, device=state.device), reduction="sum")
    return int(total)


def loss_and_metrics(
    state: TrainState, rollouts: Rollouts, scores: TeacherScores
) -> tuple[torch.Tensor, dict]:
    """The **sum** over counted tokens of one batch's per-token loss (a NaN tensor when it is not finite)
    and its metrics (:func:`backward` divides by the step's token count).

    Metrics: ``reverse_kl``, the mean over counted tokens of ``log p_S(x_t) − log p_T(x_t)`` (the k1
    estimate of the per-token reverse KL on these tokens), and ``token_reverse_kl``, that difference per
    token, ``(B, T)`` (0 off the completion; absent when the loss was not finite).
    """
    try:
        fn = _fused_loss if scores.mode == "hidden" else _logits_loss
        loss, student_lp, teacher_lp = fn(state, rollouts, scores)
    except NonFiniteLossError:  # NaN logits (e.g. diverged weights): this step is skipped
        return torch.tensor(float("nan"), device=state.device), {"reverse_kl": float("nan")}
    mask = rollouts.completion_mask
    per_token = (student_lp.detach() - teacher_lp) * mask  # (B, T), 0 off the completion
    rkl = float(per_token.sum() / mask.sum().clamp_min(1))
    return loss, {"reverse_kl": rkl, "token_reverse_kl": per_token}


def _logits_loss(state: TrainState, rollouts: Rollouts, scores: TeacherScores):
    """The full or sampled estimator from the student's completion logits, and log p_S, log p_T of each
    token."""
    config = state.config
    logits = completion_logits(state.model, rollouts, vocab_size=state.vocab)  # (B, T, V), with gradients
    mask, tokens = rollouts.completion_mask, rollouts.completion_ids.clamp_max(state.vocab - 1)
    if config.estimator == "sampled":  # the loss needs log p_S(x_t) with its gradient
        student_lp = token_log_probs(logits, tokens)  # (B, T)
        loss = sampled_token_loss(
            student_lp,
            scores.token_logprobs,
            rollouts.sampling_logprobs,
            mask,
            reduction="sum",
            max_ratio=config.max_ratio,
            kl_coef=config.kl_coef,
            kl_discount=config.kl_discount,
            baseline=config.sampled_baseline,
            groups=rollouts.prompt_index,
            advantage_clip=config.advantage_clip,
        )
        return loss, student_lp, scores.token_logprobs
    with torch.no_grad():  # only the metric needs it: no graph
        student_lp = token_log_probs(logits, tokens)
    loss = distillation_loss(
        logits,
        scores,
        mask,
        divergence=config.divergence,
        beta=config.beta,
        alpha=config.skew_alpha,
        temperature=config.loss_temperature,
        reduction="sum",
        topk_variant=config.teacher_top_k_variant,
    )
    return loss, student_lp, scores.token_logprobs


def _fused_loss(state: TrainState, rollouts: Rollouts, scores: TeacherScores):
    """The full estimator from both models' hidden states and LM heads (no (B, T, V) logits), and the tokens'
    log-probabilities under both models."""
    config = state.config
    hidden = completion_hidden(state.model, rollouts)  # (B, T, H_S), with gradients (through DDP, if any)
    weight, bias = lm_head_of(state.model, state.vocab)
    t_weight, t_bias = state.teacher.lm_head()
    device = hidden.device
    spec, param = get_divergence(config.divergence).resolve(config.divergence_weight)
    loss, student_lp, teacher_lp = fused_linear_divergence(
        spec.name,
        hidden,
        weight,
        scores.hidden.to(device),
        t_weight.to(device),
        rollouts.completion_mask,
        student_bias=bias,
        teacher_bias=None if t_bias is None else t_bias.to(device),
        weight=param,
        temperature=config.loss_temperature,
        reduction="sum",
        token_ids=rollouts.completion_ids.clamp_max(state.vocab - 1),
    )
    return loss, student_lp, teacher_lp  # hidden scores carry no token log-probs: the fused loss made them


def gradient_sync(state: TrainState, *, last: bool):
    """The context of one micro-batch's forward and backward passes: gradients are all-reduced across
    processes only on the last micro-batch of a step (``no_sync`` before it). The forward pass must run
    inside it too, or DistributedDataParallel synchronises anyway."""
    if state.sharded:
        return gradient_sync_fsdp(state.model, sync=last)
    return contextlib.nullcontext() if last else state.accelerator.no_sync(state.model)


def backward(state: TrainState, loss: torch.Tensor, step_tokens: int) -> bool:
    """Accumulate the gradient of ``loss`` (a sum over tokens) divided by ``step_tokens``, the counted tokens
    of the whole step on every process (:func:`count_tokens`); returns whether the loss was finite.

    Data parallelism averages the processes' gradients, so each process's share is multiplied by the
    number of processes: the result is the gradient of the mean over every token of the step.
    A non-finite loss still takes part, as a zero loss connected to every parameter, so that no process
    waits forever in the all-reduce.
    """
    finite = bool(torch.isfinite(loss))
    safe = loss if finite else sum((p * 0).sum() for p in state.params)
    state.accelerator.backward(safe * (state.accelerator.num_processes / max(step_tokens, 1)))
    return finite


def apply_update(state: TrainState, finite: bool, step: int) -> tuple[bool, float]:
    """Clip, then step the optimizer and the schedule if every process's loss and the gradient are finite.

    Returns ``(applied, grad_norm)``. A skipped update warns; the gradient is cleared either way.
    """
    config, accelerator = state.config, state.accelerator
    limit = config.max_grad_norm or float("inf")
    if state.sharded:  # the norm over every shard (a collective), as a plain tensor
        grad_norm = total_norm(torch.nn.utils.clip_grad_norm_(state.params, limit))
    else:
        grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), limit)
    # every process must reach the same decision: apply only if all losses and the gradient are finite
    finite_everywhere = accelerator.reduce(torch.tensor(float(finite), device=state.device), reduction="sum")
    applied = float(finite_everywhere) == accelerator.num_processes and bool(torch.isfinite(grad_norm))
    if applied:
        state.optimizer.step()
        state.scheduler.step()
        changed = getattr(BACKENDS[config.sampler_backend], "weights_changed", None)
        if callable(changed):  # a backend with its own copy of the weights (vLLM) syncs before sampling
            changed(state.student)
    else:
        warnings.warn(
            f"step {step}: the loss or its gradient is not finite; the update was skipped "
            "(not applied to the weights)",
            RuntimeWarning,
            stacklevel=3,
        )
    state.optimizer.zero_grad(set_to_none=True)
    return applied, float(grad_norm)
