"""Student rollouts: sample completions for a batch of prompts and record how they were sampled.

On-policy distillation starts here: the student writes completions for the prompts, and the
probability q(x_t) with which each token was drawn is kept for the importance-sampling loss.

The default backend (``"hf"``, :class:`DecodeLoopBackend`) calls a Hugging Face causal LM directly, one
token at a time with its KV cache; ``"hf-generate"`` runs the same draw inside ``model.generate``. A second
backend (e.g. vLLM on a GPU) only has to implement :class:`SamplerBackend` — turn prompt token ids
into completion token ids plus their sampling log-probs — and be registered in :data:`BACKENDS`; the
rest of odistill sees the same :class:`~odistill.core.rollouts.Rollouts` either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import Protocol

import torch
from transformers import GenerationConfig

from .forward import unwrap_model
from .rollouts import (
    Rollouts,
    check_context_length,
    completion_mask_from_ids,
    left_pad,
    render_prompts,
    resolve_special_ids,
)
from .vllm_sampler import VLLMBackend

__all__ = [
    "sample",
    "SamplerBackend",
    "HFGenerateBackend",
    "DecodeLoopBackend",
    "TokenDraw",
    "BACKENDS",
    "InverseCDFSampler",
    "inverse_cdf_draw",
    "stop_together",
]

#: While set (:func:`stop_together`): turns "this process's rows have all finished" into "every process's
#: have", for sharded models whose forward passes are collectives.
_STOP_TOGETHER: contextvars.ContextVar[Callable[[bool], bool] | None] = contextvars.ContextVar(
    "odistill_stop_together", default=None
)


@contextlib.contextmanager
def stop_together(everyone_finished: Callable[[bool], bool]):
    """Sample so that every process runs the same number of forward passes.

    A model sharded across processes (FSDP, DeepSpeed ZeRO-3) gathers its weights inside each forward
    pass, with every process taking part; a process whose rows all ended early would stop calling the
    model and leave the others waiting forever. Inside this block the decode loop asks
    ``everyone_finished(mine)`` (an all-reduce: True once every process's rows have finished) instead of
    stopping on its own, and the ``"hf-generate"`` backend passes ``synced_gpus=True`` to ``generate``.
    Rows that ended keep receiving the pad token, so the samples are the same as without it.
    """
    token = _STOP_TOGETHER.set(everyone_finished)
    try:
        yield
    finally:
        _STOP_TOGETHER.reset(token)


def _all_finished(finished: torch.Tensor) -> bool:
    together = _STOP_TOGETHER.get()
    mine = bool(finished.all())
    return mine if together is None else bool(together(mine))


class SamplerBackend(Protocol):
    """What a sampling backend provides (the seam for vLLM or a remote sampler).

    ``generate`` receives left-padded prompt ids ``(B, P)`` with their attention mask and returns
    ``(completion_ids (B, T), sampling_logprobs (B, T))``: completion tokens (anything after the first
    EOS is ignored) and log q(x_t) under the distribution each token was actually drawn from (after
    temperature, top-k and top-p). Greedy decoding returns zeros (q is a point mass).
    """

    def generate(
        self,
        model,
        prompt_ids,
        prompt_attention_mask,
        *,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        pad_id,
        eos_ids,
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


_BLOCK = 256  # vocabulary entries per block of the two-level inverse-CDF draw
_ONE_LEVEL_MAX = 65_536  # up to this vocabulary one cumulative sum over the row is the faster draw


def inverse_cdf_draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs`` (B, V) (non-negative, any positive total), by inverse-CDF sampling.

    With ``u`` uniform in [0, total) (one float64 uniform per row), the token is the first entry whose
    cumulative mass exceeds ``u``. The search uses ``right=True``, so it only stops where the CDF rises:
    an entry of probability 0 is never drawn. Up to :data:`_ONE_LEVEL_MAX` entries the float64 cumulative
    sum runs over the whole row; above it, over two levels (so nothing sequential runs over the whole
    vocabulary): the masses of blocks of :data:`_BLOCK` entries (a vectorised sum), their cumulative sum,
    a binary search for the block, then the cumulative sum and a binary search inside that one block,
    with the remainder ``r = u − (mass of the blocks before)`` kept strictly below the block's own total.
    Either way one uniform per row is drawn, so the two draws agree up to float64 rounding at the
    boundaries. Returns ``(B, 1)`` int64.
    """
    rows, vocab = probs.shape
    if vocab <= _ONE_LEVEL_MAX:
        cdf = probs.cumsum(-1, dtype=torch.float64)  # (B, V)
        total = cdf[:, -1:]
        u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * total
        u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # strictly below the total
        return torch.searchsorted(cdf, u, right=True).clamp_max_(vocab - 1)
    n_blocks = -(-vocab // _BLOCK)
    pad = n_blocks * _BLOCK - vocab
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(rows, n_blocks, _BLOCK)
    mass = blocks.sum(-1, dtype=torch.float64)  # (B, nb)
    cdf = mass.cumsum(-1)  # (B, nb)
    u = torch.rand(rows, 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]  # in [0, total)
    block = torch.searchsorted(cdf, u, right=True).clamp_max_(n_blocks - 1)  # (B, 1)
    before = torch.where(
        block > 0, cdf.gather(1, (block - 1).clamp_min(0)), torch.zeros_like(u)
    )  # exact cdf entry
    inner = (
        blocks.gather(1, block[:, :, None].expand(rows, 1, _BLOCK)).squeeze(1).cumsum(-1, dtype=torch.float64)
    )
    # u ≥ before, so r ≥ 0; the block's two sums may round differently, so keep r below its cumsum total
    r = torch.minimum(u - before, torch.nextafter(inner[:, -1:], torch.zeros_like(u)))
    within = torch.searchsorted(inner, r, right=True).clamp_max_(_BLOCK - 1)  # (B, 1)
    return block * _BLOCK + within


class InverseCDFSampler:
    """A logits processor that draws the next token itself and records its log-probability.

    ``generate`` then runs greedy (``do_sample=False``): this processor returns ``-inf`` everywhere
    except at the token it drew, so the argmax is that token. Why not ``torch.multinomial``? On CPU it
    draws one exponential variate per vocabulary entry (the "exponential race"), which dominates a
    sampling step at a 32k–150k vocabulary; inverse-CDF sampling needs one uniform per row
    (:func:`inverse_cdf_draw`: cumulative sums in float64, binary searches). Both draw exactly from
    the same distribution, and a token of probability 0 is never drawn. Top-k and top-p use the
    transformers warpers, so their semantics (ties, ``min_tokens_to_keep``) are the library's.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float):
        self.draw = TokenDraw(temperature, top_k, top_p)
        self.tokens: list[torch.Tensor] = []
        self.logprobs: list[torch.Tensor] = []
        self._out: torch.Tensor | None = None
        self._last: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        token, logprob = self.draw(input_ids, scores)  # (B,), (B,)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        token = token[:, None]  # (B, 1)
        # the processed scores: -inf except the drawn token (one buffer, reset where the last token was)
        if self._out is None or self._out.shape != scores.shape or self._out.device != scores.device:
            self._out = torch.full(scores.shape, float("-inf"), dtype=torch.float32, device=scores.device)
        elif self._last is not None:
            self._out.scatter_(1, self._last, float("-inf"))
        self._last = token
        return self._out.scatter_(1, token, 0.0)


class HFGenerateBackend:
    """Sampling with ``model.generate`` and the KV cache.

    The model's own ``generation_config`` (which for hub checkpoints often sets top-k, top-p or a
    repetition penalty) is ignored: the distribution sampled from is exactly the one asked for. The
    token draw itself is :class:`InverseCDFSampler` (one uniform per row instead of one exponential
    per vocabulary entry), which also records log q(x_t) as it goes, so no ``(B, T, V)`` stack of
    scores is ever kept.
    """

    def generate(
        self,
        model,
        prompt_ids,
        prompt_attention_mask,
        *,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        pad_id,
        eos_ids,
    ):
        from transformers import LogitsProcessorList

        greedy = temperature == 0.0
        params = GenerationConfig._get_default_generation_params()
        params.update(
            do_sample=False,  # greedy decoding, or greedy over the one token InverseCDFSampler leaves
            temperature=None,  # unset: no warper of generate's own (the sampler applies them)
            top_k=None,
            top_p=None,
            max_new_tokens=max_new_tokens,
            max_length=None,
            pad_token_id=pad_id,
            eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
            use_cache=True,
            return_dict_in_generate=True,
        )
        config = GenerationConfig(**params)
        synced = {"synced_gpus": True} if _STOP_TOGETHER.get() is not None else {}
        sampler = None if greedy else InverseCDFSampler(temperature, top_k, top_p)
        saved = model.generation_config
        model.generation_config = GenerationConfig()  # no checkpoint defaults leak into the sampler
        try:
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_attention_mask,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler] if sampler else []),
                **synced,
            )
        finally:
            model.generation_config = saved
        completion = out.sequences[:, prompt_ids.shape[1] :]  # (B, T)
        if greedy:
            return completion, torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
        drawn = torch.stack(sampler.tokens, dim=1)  # (B, T)
        finished = completion == pad_id  # rows that already ended are padded by generate, not drawn
        if not bool(((drawn == completion) | finished).all()):
            raise RuntimeError(
                "the sampled tokens and the generated ones disagree: a logits processor ran after "
                "odistill's sampler; please report this with your transformers version"
            )
        return completion, torch.stack(sampler.logprobs, dim=1)


class TokenDraw:
    """The next-token draw of the decode loop: temperature, then top-k and top-p (the transformers warpers,
    so ties and ``min_tokens_to_keep`` follow the library), then :func:`inverse_cdf_draw`; temperature 0 is
    greedy (argmax, log q = 0). :class:`InverseCDFSampler` draws with it inside ``generate``, so for the
    same logits and seed both backends draw the same tokens."""

    def __init__(self, temperature: float, top_k: int, top_p: float):
        from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

        self.greedy = temperature == 0.0
        self.temperature = temperature
        self.warpers = [TopKLogitsWarper(top_k)] if top_k > 0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token (B,), log q(token) (B,))`` from the last position's logits ``(B, V)``."""
        if self.greedy:
            token = logits.argmax(-1)
            return token, torch.zeros(token.shape, dtype=torch.float32, device=token.device)
        scores = logits.float() / self.temperature if self.temperature != 1.0 else logits.float()
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        token = inverse_cdf_draw(probs)  # (B, 1)
        return token.squeeze(1), probs.gather(1, token).log_().squeeze(1)


def _decode_signature(model) -> tuple[str, bool] | None:
    """How to call ``model`` one token at a time: ``(the name of its KV-cache argument, whether it takes
    logits_to_keep)``, or None when its forward takes no cache argument and position ids."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    names = [name for name in ("cache", "past_key_values") if name in params]
    if not names or "position_ids" not in params or "attention_mask" not in params:
        return None
    return names[0], "logits_to_keep" in params


def _output_cache(out):
    """The KV cache a forward returned (``cache`` in transformers ≥ 5.2x, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = out.get(name) if hasattr(out, "get") else getattr(out, name, None)
        if value is not None:
            return value
    return None


class DecodeLoopBackend:
    """Sampling with the model called directly, one token at a time, with its KV cache: the default.

    The loop of Hugging Face ``generate`` without its general machinery (logits processors, stopping
    criteria, cache set-up, per-step validation), which at lab-bench sizes costs more than the model
    calls: one prefill over the left-padded prompts (position ids skip the padding, only the last
    position's logits), then one call per new token with the appended attention mask. Rows that have
    finished get the pad token, as in ``generate``; the loop ends when every row has emitted a stop id or
    after ``max_new_tokens``. The draw (:class:`TokenDraw`) makes the same random draws in the same order
    as :class:`HFGenerateBackend`, so both return the same completions and log-probs for the same seed
    (tested). A model whose forward takes no cache argument is sampled with ``generate`` instead.
    """

    fallback = HFGenerateBackend()

    def generate(
        self,
        model,
        prompt_ids,
        prompt_attention_mask,
        *,
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        pad_id,
        eos_ids,
    ):
        from .forward import position_ids_from_mask

        signature = _decode_signature(model)
        if signature is None:
            return self.fallback.generate(
                model,
                prompt_ids,
                prompt_attention_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                pad_id=pad_id,
                eos_ids=eos_ids,
            )
        cache_name, keeps_logits = signature
        draw = TokenDraw(temperature, top_k, top_p)
        rows, device = prompt_ids.shape[0], prompt_ids.device
        attention = prompt_attention_mask
        positions = position_ids_from_mask(attention)[:, -1:]  # (B, 1): the last prompt position
        stop_ids = torch.tensor(eos_ids, device=device)
        one = torch.ones(rows, 1, dtype=attention.dtype, device=device)
        extra = {"logits_to_keep": 1} if keeps_logits else {}
        out = model(
            input_ids=prompt_ids,
            attention_mask=attention,
            position_ids=position_ids_from_mask(attention),
            use_cache=True,
            **extra,
        )
        sequence = prompt_ids
        tokens, logprobs = [], []
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            token, logprob = draw(sequence, out.logits[:, -1])
            token = token.masked_fill(finished, pad_id)
            tokens.append(token)
            logprobs.append(logprob)
            finished = finished | torch.isin(token, stop_ids)
            if t == max_new_tokens - 1 or _all_finished(finished):
                break
            if draw.warpers:  # only the warpers read the sequence so far (the transformers signature)
                sequence = torch.cat([sequence, token[:, None]], dim=1)
            attention = torch.cat([attention, one], dim=1)
            positions = positions + 1
            out = model(
                input_ids=token[:, None],
                attention_mask=attention,
                position_ids=positions,
                use_cache=True,
                **{cache_name: _output_cache(out)},
            )
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


#: The registered sampling backends, by name. ``"hf"`` (the default) calls a Hugging Face model directly in
#: odistill's decode loop; ``"hf-generate"`` samples with ``model.generate``. Both draw the same tokens.
#: ``"vllm"`` samples with a colocated vLLM engine on a GPU (:mod:`odistill.core.vllm_sampler`).
BACKENDS: dict[str, SamplerBackend] = {
    "hf": DecodeLoopBackend(),
    "hf-generate": HFGenerateBackend(),
    "vllm": VLLMBackend(),  # builds its engine (and imports vllm) on first use only
}


def sample(
    model,
    tokenizer,
    prompts,
    *,
    n: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    backend: str = "hf",
    source: str = "student",
    keep_special_tokens: bool = False,
    max_prompt_length: int | None = None,
) -> Rollouts:
    """Sample ``n`` completions per prompt from ``model`` and return them as :class:`Rollouts`.

    Args:
        model: any causal LM; it is put in eval mode for sampling and restored afterwards.
        tokenizer: its tokenizer (a pad token is optional; EOS is required).
        prompts: list of ``B`` strings (used as they are), or chat conversations (lists of
            ``{"role", "content"}``) rendered with the tokenizer's chat template.
        n: completions per prompt; rows are ordered prompt-major (``B·n`` rows).
        max_new_tokens: longest completion (generation also stops at EOS and at the model's other stop ids,
            see :func:`~odistill.core.rollouts.resolve_special_ids`).
        temperature: sampling temperature (> 0), or 0 for greedy decoding.
        top_p: nucleus sampling threshold in (0, 1]; 1 keeps the whole distribution.
        top_k: keep only the ``top_k`` likeliest tokens; 0 keeps all.
        seed: makes the samples reproducible (the global RNG state is left untouched).
        backend: a key of :data:`BACKENDS`.
        source: recorded in ``Rollouts.source`` (``"student"`` or ``"teacher"``).
        keep_special_tokens: keep the special tokens a completion writes before its EOS (``<bos>``,
            ``<unk>``, ``<pad>``) in ``Rollouts.texts``, so a verifier sees a malformed completion as
            malformed; by default they are removed. The EOS that ends a completion is never in the text.
        max_prompt_length: cut longer prompts from the left to their last ``max_prompt_length`` tokens,
            with a warning (see :func:`~odistill.core.rollouts.render_prompts`); None keeps them whole
            (a prompt too long for the model's context window is then a clear error).

    Returns:
        Rollouts with ``completion_mask`` (tokens up to and including the first EOS),
        ``sampling_logprobs`` = log q(x_t) under the distribution actually sampled from, and ``clipped``
        (the rows cut at ``max_new_tokens`` before a stop token).

    Example:
        >>> rollouts = sample(student, tokenizer, ["12+34="], n=4, max_new_tokens=5, seed=0)  # doctest: +SKIP
        >>> rollouts.texts  # doctest: +SKIP
        ['46', '46', '47', '46']
    """
    temperature = _check_sampling(n, max_new_tokens, temperature, top_p, top_k, backend)
    model = unwrap_model(model)
    pad_id, eos_ids = resolve_special_ids(tokenizer, model)
    prompt_texts, prompt_ids = render_prompts(tokenizer, prompts, max_prompt_length)
    prompt_ids = [ids for ids in prompt_ids for _ in range(n)]  # prompt-major repetition
    prompt_texts = [text for text in prompt_texts for _ in range(n)]
    ids, attn = left_pad(prompt_ids, pad_id)  # (B·n, P)
    check_context_length(model, ids.shape[1], max_new_tokens)
    device = next(model.parameters()).device
    ids, attn = ids.to(device), attn.to(device)

    completion, logprobs = _generate(
        model,
        ids,
        attn,
        seed,
        backend,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=float(top_p),
        top_k=top_k,
        pad_id=pad_id,
        eos_ids=eos_ids,
    )
    mask = completion_mask_from_ids(completion, eos_ids)  # (B·n, T)
    stopped = torch.isin(completion, torch.tensor(eos_ids, device=completion.device)) & mask
    clipped = ~stopped.any(-1)  # no stop token within max_new_tokens: generation cut the row
    completion = completion.masked_fill(~mask, pad_id)
    texts = _decode(tokenizer, completion, mask, eos_ids, keep_special_tokens)
    return Rollouts(
        input_ids=torch.cat([ids, completion], dim=1),
        attention_mask=torch.cat([attn, mask.long()], dim=1),
        completion_mask=mask,
        prompt_width=ids.shape[1],
        sampling_logprobs=logprobs.float().masked_fill(~mask, 0.0),
        prompt_lengths=attn.sum(1),
        prompt_index=torch.arange(len(prompts), device=device).repeat_interleave(n),
        prompts=prompt_texts,
        texts=texts,
        source=source,
        clipped=clipped,
    )


def _decode(
    tokenizer, completion: torch.Tensor, mask: torch.Tensor, eos_ids, keep_special_tokens: bool
) -> list[str]:
    """The completion texts without the stop token that ends each one, and without any other special
    token unless ``keep_special_tokens``."""
    ends = set(eos_ids)
    rows = []
    for ids, keep in zip(completion.tolist(), mask.tolist(), strict=True):
        counted = [t for t, k in zip(ids, keep, strict=True) if k]
        rows.append(counted[:-1] if counted and counted[-1] in ends else counted)
    return tokenizer.batch_decode(rows, skip_special_tokens=not keep_special_tokens)


def _check_sampling(n, max_new_tokens, temperature, top_p, top_k, backend) -> float:
    """Validate the arguments of :func:`sample`; returns the temperature as a float."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n (completions per prompt) must be an integer >= 1, got {n!r}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    temperature = float(temperature)
    if not (temperature >= 0.0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 = no top-k), got {top_k!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampling backend {backend!r}; available: {sorted(BACKENDS)}")
    return temperature


def _generate(model, ids, attn, seed, backend, **options):
    """Run the backend in eval mode without gradients, seeded without touching the global RNG state."""
    device = ids.device
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            chosen = BACKENDS[backend]
            if getattr(chosen, "takes_seed", False):  # e.g. vLLM: it does not draw from torch's RNG
                options = {**options, "seed": seed}
            completion, logprobs = chosen.generate(model, ids, attn, **options)
    finally:
        model.train(was_training)
    return completion, logprobs
