"""Rollouts: prompt + completion token batches, the currency between sampler, teacher and loss.

A batch of ``B`` sequences is stored as one ``(B, P + T)`` tensor: prompts are **left**-padded to a
common width ``P`` and completions **right**-padded to a common width ``T``, so every completion
starts at column ``P``::

    <pad> <pad> <bos> 1 2 + 3 = | 1 5 <eos> <pad>        P = 7, T = 4
    <bos> 1 2 3 + 4 5 6 =       | 5 7 9 <eos>

Everything per completion token has shape ``(B, T)``: ``completion_mask`` is True on completion
tokens up to and including the first EOS (never on the prompt or padding) and ``sampling_logprobs``
holds log q(x_t), the probability with which the sampler drew each token (for importance sampling).

:func:`odistill.core.forward.completion_logits` runs any causal LM on a rollout batch and returns the
``(B, T, V)`` logits that predict the completion tokens, with the same position ids that generation used.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

__all__ = [
    "Rollouts",
    "rollouts_from_text",
    "resolve_special_ids",
    "render_prompts",
    "completion_mask_from_ids",
    "check_context_length",
    "left_pad",
    "right_pad",
]


@dataclass
class Rollouts:
    """A batch of prompts with their completions (see the module docstring for the layout).

    Attributes:
        input_ids: ``(B, P + T)`` token ids: left-padded prompt, then right-padded completion.
        attention_mask: ``(B, P + T)`` 1 on real tokens (prompt and completion up to EOS), 0 on padding.
        completion_mask: ``(B, T)`` bool, True on completion tokens up to and including the first EOS.
        prompt_width: ``P``, the column where every completion starts.
        sampling_logprobs: ``(B, T)`` log q(x_t) of each completion token under the distribution it was
            sampled from (0 where ``completion_mask`` is False), or None when unknown (dataset text).
        prompt_lengths: ``(B,)`` number of real prompt tokens per row.
        prompt_index: ``(B,)`` which input prompt each row came from (rows repeat with ``n > 1``).
        prompts: the prompt texts as they were tokenised (chat template applied), one per row.
        texts: the decoded completions (special tokens removed), one per row.
        source: where the completions came from: ``"student"``, ``"teacher"`` or ``"dataset"``.
        clipped: ``(B,)`` bool, True where a sampled completion reached ``max_new_tokens`` without a stop
            token (it was cut, not finished; its tokens are scored as they are); None for dataset text.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int
    sampling_logprobs: torch.Tensor | None = None
    prompt_lengths: torch.Tensor | None = None
    prompt_index: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    source: str = "student"
    clipped: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        """``(B, T)`` the completion tokens (padding included; see ``completion_mask``)."""
        return self.input_ids[:, self.prompt_width :]

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_clipped(self) -> int:
        """Completions cut at ``max_new_tokens`` before any stop token (0 for dataset text)."""
        return 0 if self.clipped is None else int(self.clipped.sum())

    @property
    def num_completion_tokens(self) -> int:
        """Completion tokens that count (up to and including EOS), over the whole batch."""
        return int(self.completion_mask.sum())

    def to(self, device: torch.device | str) -> Rollouts:
        """A copy with every tensor on ``device``."""
        moved = {
            name: getattr(self, name).to(device)
            for name in (
                "input_ids",
                "attention_mask",
                "completion_mask",
                "sampling_logprobs",
                "prompt_lengths",
                "prompt_index",
                "clipped",
            )
            if getattr(self, name) is not None
        }
        return replace(self, **moved)

    def __len__(self) -> int:
        return self.batch_size

    def rows(self, start: int, stop: int) -> Rollouts:
        """Rows ``start:stop`` of the batch (views of the tensors; the texts are left out)."""
        if start == 0 and stop >= len(self):
            return self
        take = lambda t: None if t is None else t[start:stop]
        return Rollouts(
            input_ids=self.input_ids[start:stop],
            attention_mask=self.attention_mask[start:stop],
            completion_mask=self.completion_mask[start:stop],
            prompt_width=self.prompt_width,
            sampling_logprobs=take(self.sampling_logprobs),
            prompt_lengths=take(self.prompt_lengths),
            prompt_index=take(self.prompt_index),
            source=self.source,
            clipped=take(self.clipped),
        )


def resolve_special_ids(tokenizer, model=None) -> tuple[int, list[int]]:
    """Return ``(pad_id, eos_ids)``: every id that ends a completion, and the id that pads.

    A completion stops at the tokenizer's EOS **and** at every id of the model's
    ``generation_config.eos_token_id`` (an int or a list: chat models often stop at an end-of-turn token
    as well as at EOS), as Hugging Face ``generate`` does. The tokenizer's EOS comes first (it is the one
    appended to dataset completions). Without a pad token, EOS pads (with a warning).

    Args:
        tokenizer: any Hugging Face tokenizer.
        model: optionally the model that writes the completions (its generation config adds stop ids).

    Raises:
        ValueError: neither the tokenizer nor the model names an EOS token, so a completion's end cannot
            be found.
    """
    eos_ids = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for eos in (tokenizer.eos_token_id, config_eos):
        for e in eos if isinstance(eos, list | tuple) else [] if eos is None else [eos]:
            if int(e) not in eos_ids:
                eos_ids.append(int(e))
    if not eos_ids:
        raise ValueError(
            "the tokenizer has no eos_token: odistill needs one to know where a completion ends. "
            "Set tokenizer.eos_token (e.g. to the end-of-turn token of your chat template)."
        )
    pad = tokenizer.pad_token_id
    if pad is None:
        warnings.warn(
            "the tokenizer has no pad_token; odistill pads with the EOS token instead (masks keep padding "
            "out of every loss). Set tokenizer.pad_token to silence this warning.",
            stacklevel=3,
        )
        pad = eos_ids[0]
    return int(pad), eos_ids


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """True on completion tokens up to and including the first EOS. (B, T) -> (B, T) bool

    Everything after the first EOS is padding (``generate`` pads finished rows); a sequence that never
    emits EOS counts in full. A pad token sampled *before* EOS is a real sampled token and counts.
    """
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_ids), device=completion_ids.device)).long()
    return (is_eos.cumsum(-1) - is_eos) == 0


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id lists to one width: ``(ids (B, W), attention_mask (B, W))``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, s in enumerate(sequences):
        if s:
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            attn[row, width - len(s) :] = 1
    return ids, attn


def right_pad(sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Right-pad token-id lists to one width (at least 1): ``(B, W)``."""
    width = max(1, max(len(s) for s in sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, s in enumerate(sequences):
        if s:
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids


def render_prompts(tokenizer, prompts, max_length: int | None = None) -> tuple[list[str], list[list[int]]]:
    """Tokenise prompts: plain strings as they are (with the tokenizer's special tokens, e.g. BOS),
    chat conversations (lists of ``{"role", "content"}`` dicts) through the tokenizer's chat template
    with the generation prompt added. Returns the rendered texts and their token ids.

    ``max_length``: a prompt of more tokens is cut **from the left** to its last ``max_length`` tokens
    (the end of a prompt — the question, the generation prompt — is what the completion follows), its text
    becomes the decoded kept tokens, and a warning says so (once per place it happens)."""
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ValueError(f"max_prompt_length must be an integer >= 1 or None, got {max_length!r}")
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(
            "prompts must be a list of strings or a list of chat conversations (lists of messages)"
        )
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    texts, special = (
        [],
        [],
    )  # special: add the tokenizer's special tokens (plain strings) or not (rendered chats)
    for prompt in prompts:
        if isinstance(prompt, str):
            texts.append(prompt)
            special.append(True)
        elif isinstance(prompt, Sequence) and all(isinstance(m, dict) for m in prompt):
            if getattr(tokenizer, "chat_template", None) is None:
                raise ValueError(
                    "a prompt is a chat conversation but the tokenizer has no chat_template; pass plain "
                    "strings, or set tokenizer.chat_template"
                )
            texts.append(
                tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
            )
            special.append(False)
        else:
            raise TypeError(
                f"each prompt must be a string or a list of message dicts, got {type(prompt).__name__}"
            )
    ids: list[list[int] | None] = [None] * len(texts)
    for flag in (True, False):  # one batched tokenizer call per kind
        where = [i for i, s in enumerate(special) if s is flag]
        if where:
            encoded = tokenizer([texts[i] for i in where], add_special_tokens=flag)["input_ids"]
            for i, row in zip(where, encoded, strict=True):
                ids[i] = list(row)
    if max_length is not None:
        cut = [i for i, row in enumerate(ids) if len(row) > max_length]
        for i in cut:
            ids[i] = ids[i][-max_length:]
            texts[i] = tokenizer.decode(ids[i])
        if cut:
            warnings.warn(
                f"prompts longer than max_prompt_length={max_length} tokens were cut from the left (their "
                "first tokens dropped, the end kept); raise max_prompt_length to keep them whole",
                UserWarning,
                stacklevel=3,
            )
    return texts, ids


def check_context_length(model, prompt_width: int, max_new_tokens: int) -> None:
    """Raise a clear error when prompt + completion cannot fit the model's context window."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and prompt_width + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({prompt_width} tokens, the longest in the batch) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_width + max_new_tokens} exceeds the model's context window of {limit} tokens; "
            "shorten the prompts (max_prompt_length cuts them from the left) or lower max_new_tokens"
        )


def rollouts_from_text(
    tokenizer,
    prompts,
    completions: Sequence[str],
    *,
    add_eos: bool = True,
    source="dataset",
    max_prompt_length: int | None = None,
):
    """Build :class:`Rollouts` from given completion texts (off-policy data: a dataset or a teacher).

    Args:
        tokenizer: the shared tokenizer.
        prompts: list of strings or chat conversations (see :func:`render_prompts`).
        completions: one completion text per prompt (without EOS; it is appended when ``add_eos``).
        add_eos: append the EOS token to each completion, so the student learns to stop.
        source: recorded in ``Rollouts.source``.
        max_prompt_length: cut longer prompts from the left (see :func:`render_prompts`).

    Returns:
        Rollouts with ``sampling_logprobs=None`` (the sampling distribution is unknown).
    """
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; pass one completion per prompt"
        )
    pad_id, eos_ids = resolve_special_ids(tokenizer)
    prompt_texts, prompt_ids = render_prompts(tokenizer, prompts, max_prompt_length)
    completion_ids = [
        list(tokenizer(c, add_special_tokens=False)["input_ids"]) + ([eos_ids[0]] if add_eos else [])
        for c in completions
    ]
    left, left_attn = left_pad(prompt_ids, pad_id)
    right = right_pad(completion_ids, pad_id)
    lengths = torch.tensor([len(c) for c in completion_ids])
    mask = torch.arange(right.shape[1])[None, :] < lengths[:, None]  # (B, T)
    return Rollouts(
        input_ids=torch.cat([left, right], 1),
        attention_mask=torch.cat([left_attn, mask.long()], 1),
        completion_mask=mask,
        prompt_width=left.shape[1],
        sampling_logprobs=None,
        prompt_lengths=left_attn.sum(1),
        prompt_index=torch.arange(len(prompts)),
        prompts=prompt_texts,
        texts=list(completions),
        source=source,
    )
