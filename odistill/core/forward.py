"""Forward passes of a causal LM over a rollout batch: the logits (or hidden states) that predict each
completion token, and access to the LM head.

Row ``t`` of every result is the model's output at column ``P + t − 1`` of the rollout batch (the
token before completion token ``t``), with the position ids that generation used (left padding
skipped), so the logits here are the ones the sampler drew from. Models may be wrapped for
distributed training (``DistributedDataParallel``, accelerate): :func:`unwrap_model` is the one place
that looks through a wrapper.
"""

from __future__ import annotations

import torch

from .rollouts import Rollouts

__all__ = [
    "disable_dropout",
    "unwrap_model",
    "position_ids_from_mask",
    "completion_logits",
    "completion_hidden",
    "lm_head_of",
    "output_vocab_size",
]


def unwrap_model(model):
    """The model inside a ``DistributedDataParallel`` / accelerate wrapper (or the model itself)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


_DROPOUTS = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


def disable_dropout(model: torch.nn.Module) -> int:
    """Turn every dropout of ``model`` off in place, whatever its train/eval mode; returns how many were on.

    Sets ``p = 0`` on each ``nn.Dropout*`` module and zeroes float attributes whose name contains
    ``dropout`` on the other modules (Hugging Face attention layers keep ``attention_dropout`` as a plain
    float and pass it to the attention kernel in train mode). The model's config is left as it is, so a
    checkpoint saved later still says what the user built. In distillation the training forward pass then
    sees the distribution that sampled the tokens (TRL's trainers do the same for ``nn.Dropout``).
    """
    changed = 0
    for module in unwrap_model(model).modules():
        if isinstance(module, _DROPOUTS):
            changed += module.p > 0
            module.p = 0.0
            continue
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and not isinstance(value, bool) and value > 0:
                setattr(module, name, 0.0)
                changed += 1
    return int(changed)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding, as Hugging Face ``generate`` computes them. (B, L) -> (B, L)"""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _forward_inputs(rollouts: Rollouts) -> tuple[dict, slice]:
    """The model inputs of a rollout batch (position ids skip left padding) and the columns whose outputs
    predict the T completion tokens: ``P − 1 … P + T − 2``."""
    input_ids, attention_mask = rollouts.input_ids, rollouts.attention_mask
    total, width = input_ids.shape[1], input_ids.shape[1] - rollouts.prompt_width
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
    )
    return kwargs, slice(total - width - 1, total - 1)


def completion_logits(model, rollouts: Rollouts, *, vocab_size: int | None = None) -> torch.Tensor:
    """Logits that predict each completion token: ``(B, T, V)``, float as the model returns them.

    Row ``t`` is the model's output at column ``P + t − 1`` (the token before completion token ``t``).
    Only the completion part of the logits is computed when the model supports ``logits_to_keep``.
    Position ids skip left padding exactly as in generation, so these logits are the ones the
    sampler drew from.

    Args:
        model: any causal LM (``AutoModelForCausalLM``-like, possibly wrapped for distributed training).
        rollouts: the batch, on the model's device.
        vocab_size: keep only the first ``vocab_size`` logits (a model may pad its vocabulary).
    """
    kwargs, columns = _forward_inputs(rollouts)
    # the hidden states are gathered before the LM head, so only T rows of logits are computed and they
    # come out contiguous
    keep = torch.arange(columns.start, columns.stop, device=rollouts.input_ids.device)
    try:
        logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: compute everything, then slice
        logits = model(**kwargs, use_cache=False).logits[:, columns]
    if logits.shape[1] != len(keep):  # a model that ignores a tensor logits_to_keep
        logits = logits[:, columns]
    if vocab_size is not None and logits.shape[-1] != vocab_size:
        logits = logits[..., :vocab_size]
    return logits


#: Config attributes of models whose logits are not just ``hidden @ W.T + b`` (softcapping, scaling):
#: the fused LM-head path would compute the wrong distribution for them.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def lm_head_of(model, vocab_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The LM head's ``(weight (V, H), bias (V,) or None)``, cut to ``vocab_size`` rows if given.

    Raises:
        ValueError: the model has no plain linear LM head, or its config transforms the logits
            (softcapping or scaling), so ``hidden @ weight.T`` would not be its logits.
    """
    model = unwrap_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no plain linear LM head (get_output_embeddings() returned "
            f"{type(head).__name__}); the fused LM-head loss needs one: set fused_lm_head=False"
        )
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _LOGIT_TRANSFORMS:
        value = getattr(text_config, name, None)
        if value not in (None, 0, 0.0, 1, 1.0, False):
            raise ValueError(
                f"{type(model).__name__} transforms its logits ({name}={value!r}), so they are not "
                "hidden @ W.T: the fused LM-head loss would train on the wrong distribution; set "
                "fused_lm_head=False"
            )
    weight, bias = head.weight, head.bias
    if vocab_size is not None and weight.shape[0] != vocab_size:
        weight, bias = weight[:vocab_size], (None if bias is None else bias[:vocab_size])
    return weight, bias


def completion_hidden(model, rollouts: Rollouts) -> torch.Tensor:
    """The last hidden states that predict each completion token: ``(B, T, H)``, no logits at all.

    The same rows as :func:`completion_logits` (column ``P + t − 1`` for completion token ``t``), taken
    *before* the LM head: ``lm_head(completion_hidden(m, r)) == completion_logits(m, r)``. The model is
    asked for no logits (``logits_to_keep`` = an empty index), so the ``(B, T, V)`` tensor never exists;
    this is the input of :func:`odistill.core.fused.fused_linear_divergence`.
    """
    kwargs, columns = _forward_inputs(rollouts)
    none = torch.zeros(0, dtype=torch.long, device=rollouts.input_ids.device)
    try:
        out = model(**kwargs, logits_to_keep=none, output_hidden_states=True, use_cache=False)
    except TypeError as error:
        raise ValueError(
            f"{type(unwrap_model(model)).__name__}.forward does not accept logits_to_keep / "
            "output_hidden_states, which the fused LM-head loss needs; set fused_lm_head=False"
        ) from error
    hidden = out.hidden_states[-1]  # (B, P + T, H): after the final norm, what the LM head reads
    return hidden[:, columns]


def output_vocab_size(model) -> int:
    """The number of logits the model produces (its LM head's rows), which may exceed the tokenizer."""
    model = unwrap_model(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)
