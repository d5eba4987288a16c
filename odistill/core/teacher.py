"""The teacher: what it returns about each completion token, the :class:`Teacher` seam, and the local teacher.

A teacher is anything that knows its vocabulary size and can ``score(rollouts, mode)`` (the
:class:`Teacher` protocol); :func:`odistill.distill` needs nothing else (plus ``sample`` for sequence-level
KD, and ``lm_head`` for the fused LM-head loss). :class:`TeacherScorer` is the local implementation: a
Hugging Face causal LM in this process, one forward pass over the rollouts, no gradients. A teacher
served elsewhere is one more class with the same two members (:mod:`odistill.core.remote`).

Four things a teacher can return about each completion position, from the most to the least
informative (and memory hungry):

=========== ==================================================== ============ ======================
mode        returns                                              memory       enough for
=========== ==================================================== ============ ======================
``full``    log p_T(· | x_<t) over the whole vocabulary           O(B·T·V)     any divergence (GKD)
``topk``    the k largest log-probs, their ids, the rest's mass   O(B·T·k)     divergences on top-k
``sampled`` log p_T(x_t | x_<t) of the token that was sampled     O(B·T)       sampled reverse KL
``hidden``  the last hidden states, before the LM head            O(B·T·H)     any divergence, fused
=========== ==================================================== ============ ======================

``sampled`` is what a remote log-prob server returns (Thinking Machines' recipe); with
``micro_batch_size`` the teacher's logits never exist for more than a few rows at a time, so the
scores take O(B·T) memory. Every mode but ``hidden`` also returns ``token_logprobs`` (the sampled
tokens' log-probs), used for the per-token reverse-KL metric.

``hidden`` is for a teacher that lives in the same process: its hidden states plus its LM-head weight
(:meth:`TeacherScorer.lm_head`) are the full distribution in compressed form (H numbers per position
instead of V), and :func:`odistill.core.fused.fused_linear_divergence` turns them into the divergence one
chunk of positions at a time, so neither model's ``(B, T, V)`` logits ever exist
(``DistillConfig(fused_lm_head=True)``). The fused loss also returns the token log-probs, so this mode
does not compute them (``token_logprobs`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .forward import completion_hidden, completion_logits, lm_head_of, output_vocab_size
from .rollouts import Rollouts
from .sampler import sample
from .tensor_ops import MASKED_LOG_PROB, logsumexp_rows

__all__ = [
    "SCORE_MODES",
    "Teacher",
    "TeacherScorer",
    "TeacherScores",
    "vocab_size_of",
    "check_vocab_compatible",
]

#: What a teacher can be asked for (see the module docstring).
SCORE_MODES = ("full", "topk", "sampled", "hidden")


@dataclass
class TeacherScores:
    """What the teacher said about each completion position of a rollout batch.

    Attributes:
        mode: ``"full"``, ``"topk"``, ``"sampled"`` or ``"hidden"``.
        token_logprobs: ``(B, T)`` log p_T(x_t) of each completion token (0 at masked positions);
            None in ``"hidden"`` mode.
        logprobs: ``(B, T, V)`` full log-probabilities (``mode="full"``), else None.
        topk_logprobs: ``(B, T, k)`` the k largest log-probs, descending (``mode="topk"``), else None.
        topk_ids: ``(B, T, k)`` their token ids (``mode="topk"``), else None.
        topk_tail_logprob: ``(B, T)`` the log of the teacher's probability **outside** its top k,
            ``log(1 − Σ_top-k p_T)`` (``-inf`` where the top k hold all the mass), computed from the
            full logits so that it stays exact when the top k hold nearly everything (``mode="topk"``);
            None when a teacher does not report it (the loss then derives it from ``topk_logprobs``).
        hidden: ``(B, T, H)`` the teacher's last hidden states (``mode="hidden"``), else None.
    """

    mode: str
    token_logprobs: torch.Tensor | None
    logprobs: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    topk_tail_logprob: torch.Tensor | None = None

    def to(self, device) -> TeacherScores:
        """A copy with every tensor on ``device``."""
        move = lambda t: None if t is None else t.to(device)
        return TeacherScores(
            self.mode,
            move(self.token_logprobs),
            move(self.logprobs),
            move(self.topk_logprobs),
            move(self.topk_ids),
            move(self.hidden),
            move(self.topk_tail_logprob),
        )

    @staticmethod
    def cat(parts: list[TeacherScores]) -> TeacherScores:
        """The scores of consecutive row blocks joined into one batch (all in one mode)."""

        def join(name):
            return None if getattr(parts[0], name) is None else torch.cat([getattr(p, name) for p in parts])

        return TeacherScores(
            parts[0].mode,
            join("token_logprobs"),
            join("logprobs"),
            join("topk_logprobs"),
            join("topk_ids"),
            join("hidden"),
            join("topk_tail_logprob"),
        )


@runtime_checkable
class Teacher(Protocol):
    """What :func:`odistill.distill` needs of a teacher (the seam for a teacher that is not a local module).

    ``vocab_size`` is the number of log-probs it scores per position (checked against the student before
    training). ``score`` returns :class:`TeacherScores` for a rollout batch in one of
    :data:`SCORE_MODES` (``k`` is the number of log-probs per position in ``"topk"`` mode), on the
    rollouts' device. Optional members: ``sample(tokenizer, prompts, **sampling) -> Rollouts`` for
    sequence-level KD (``seq_kd=True``), ``lm_head() -> (weight, bias)`` for ``"hidden"`` scores,
    ``modes`` (the modes it can return; :func:`odistill.distill` refuses a config that needs another
    one before training), ``restrict_vocab(n)`` (score over the first ``n`` logits only: called when
    the teacher pads its LM head beyond the vocabulary it shares with the student) and
    ``check_tokenizer(tokenizer)`` (raises when the teacher's token ids are not the tokenizer's; called
    before training). :class:`odistill.core.remote.RemoteTeacher` is one.
    """

    vocab_size: int

    def score(self, rollouts: Rollouts, mode: str = "sampled", *, k: int | None = None) -> TeacherScores: ...


def vocab_size_of(model_or_teacher) -> int:
    """The number of logits a model produces, or the ``vocab_size`` a :class:`Teacher` reports."""
    if isinstance(model_or_teacher, torch.nn.Module):
        return output_vocab_size(model_or_teacher)
    size = getattr(model_or_teacher, "vocab_size", None)
    if not isinstance(size, int) or size < 1:
        raise TypeError(
            f"{type(model_or_teacher).__name__} is neither a torch.nn.Module nor a Teacher with an "
            "integer vocab_size"
        )
    return size


def check_vocab_compatible(student, teacher, tokenizer=None) -> int:
    """Check that student and teacher score the same vocabulary; return the common size V.

    ``student`` and ``teacher`` are models or :class:`Teacher` objects (which report ``vocab_size``).

    Models of one family may pad their LM head differently (e.g. 151936 vs 152064 rows for one
    tokenizer); that is fine as long as both cover the tokenizer: the first ``min(V_S, V_T)`` logits
    are compared. Anything else means the two models do not share a tokenizer.

    Raises:
        ValueError: naming both sizes (and the tokenizer's) when they cannot be compared.
    """
    v_s, v_t = vocab_size_of(student), vocab_size_of(teacher)
    if v_s == v_t:
        return v_s
    n_tok = len(tokenizer) if tokenizer is not None else None
    if n_tok is not None and min(v_s, v_t) >= n_tok:
        return min(v_s, v_t)
    raise ValueError(
        f"student and teacher vocabularies differ: the student has {v_s} output logits, the teacher {v_t}"
        + (f" (the tokenizer has {n_tok} tokens)" if n_tok is not None else "")
        + ". On-policy distillation compares next-token distributions token by token, so both models must "
        "use the same tokenizer: pick a teacher and student from one model family, or load the student "
        "with the teacher's tokenizer."
    )


class TeacherScorer:
    """The local :class:`Teacher`: a frozen causal LM in this process.
    ``TeacherScorer(teacher).score(rollouts, "full")``.

    The teacher is put in eval mode (dropout off) — a teacher left in train mode would give noisy
    scores — and runs under ``torch.no_grad`` with its parameters frozen. It may sit on its own device:
    rollouts are moved there and the scores come back to the rollouts' device.

    Args:
        model: the teacher, any causal LM.
        mode: the default of :meth:`score` (and what calling the scorer returns): ``"full"``,
            ``"topk"``, ``"sampled"`` or ``"hidden"`` (see the module docstring).
        k: the default number of log-probs kept per position in ``"topk"`` mode (1 ≤ k ≤ V).
        device: where the teacher runs (default: where its parameters are); it is moved there.
        micro_batch_size: score this many rows per forward pass (default: all at once); bounds the
            teacher's peak memory at O(micro_batch_size·T·V).
        vocab_size: keep only the first ``vocab_size`` logits (set by the trainer when student and
            teacher pad their vocabularies differently).

    Example:
        >>> scores = TeacherScorer(teacher).score(rollouts, "sampled")  # doctest: +SKIP
        >>> scores.token_logprobs.shape  # (B, T)  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        *,
        mode: str = "full",
        k: int = 20,
        device=None,
        micro_batch_size: int | None = None,
        vocab_size: int | None = None,
    ):
        self.vocab_size = vocab_size if vocab_size is not None else output_vocab_size(model)
        self._check_mode(mode, k, model)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        if device is not None:
            model = model.to(device)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model, self.mode, self.k, self.micro_batch_size = model, mode, k, micro_batch_size

    def _check_mode(self, mode: str, k, model) -> None:
        if mode not in SCORE_MODES:
            raise ValueError(f"mode must be one of {SCORE_MODES}, got {mode!r}")
        if mode == "hidden":
            lm_head_of(model, self.vocab_size)  # a clear error now if the logits are not hidden @ W.T
        if mode == "topk" and not (
            isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= self.vocab_size
        ):
            raise ValueError(f"k must be an integer in [1, V={self.vocab_size}] for mode='topk', got {k!r}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lm_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's LM head ``(weight (V, H), bias or None)``, cut to the shared vocabulary: with the
        ``"hidden"`` scores, ``hidden @ weight.T (+ bias)`` are the teacher's logits."""
        return lm_head_of(self.model, self.vocab_size)

    def sample(self, tokenizer, prompts, **sampling) -> Rollouts:
        """Completions sampled from the teacher (sequence-level KD): :func:`odistill.core.sampler.sample`."""
        return sample(self.model, tokenizer, prompts, source="teacher", **sampling)

    def score(self, rollouts: Rollouts, mode: str | None = None, *, k: int | None = None) -> TeacherScores:
        """Score a rollout batch in ``mode`` (default: the scorer's); :class:`TeacherScores` on the
        rollouts' device."""
        mode = self.mode if mode is None else mode
        k = self.k if k is None else k
        if (mode, k) != (self.mode, self.k):
            self._check_mode(mode, k, self.model)
        home = rollouts.input_ids.device
        on_teacher = rollouts.to(self.device)
        step = self.micro_batch_size or len(on_teacher)
        # no_grad, not inference_mode: the scores enter the student's loss graph as constants, which
        # inference tensors cannot (they would need a full copy on the way out)
        with torch.no_grad():
            parts = [
                self._score_rows(on_teacher.rows(a, a + step), mode, k)
                for a in range(0, len(on_teacher), step)
            ]
        scores = parts[0] if len(parts) == 1 else TeacherScores.cat(parts)
        return scores.to(home) if home != self.device else scores

    __call__ = score

    def _score_rows(self, rollouts: Rollouts, mode: str, k: int) -> TeacherScores:
        if mode == "hidden":
            return TeacherScores("hidden", None, hidden=completion_hidden(self.model, rollouts))
        logits = completion_logits(self.model, rollouts, vocab_size=self.vocab_size)  # (b, T, V), model dtype
        ids = rollouts.completion_ids  # (b, T)
        in_vocab = ids < logits.shape[-1]
        safe_ids = ids.clamp_max(logits.shape[-1] - 1)[..., None]
        if mode == "full":
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # (b, T, V)
            token = logprobs.gather(-1, safe_ids).squeeze(-1)
        else:
            # log p(x) = logit(x) − logsumexp(logits), in float32 a few rows at a time:
            # no (b, T, V) float32 copy
            lse = logsumexp_rows(logits)  # (b, T)
            token = logits.gather(-1, safe_ids).squeeze(-1).float() - lse
        token = torch.where(in_vocab, token, torch.full_like(token, MASKED_LOG_PROB))
        token = token.masked_fill(~rollouts.completion_mask, 0.0)
        if mode == "full":
            return TeacherScores("full", token, logprobs=logprobs)
        if mode == "topk":
            values, indices = logits.topk(k, dim=-1)  # (b, T, k), descending (log-softmax keeps the order)
            # the mass outside the top k, from the logits (1 − Σ top-k would lose it to rounding), a few
            # rows at a time: no (b, T, V) copy
            tail = logsumexp_rows(logits, exclude=indices) - lse  # (b, T), −inf when k = V
            return TeacherScores(
                "topk",
                token,
                topk_logprobs=values.float() - lse[..., None],
                topk_ids=indices,
                topk_tail_logprob=tail,
            )
        return TeacherScores("sampled", token)
