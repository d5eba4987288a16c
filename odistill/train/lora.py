"""LoRA students through PEFT: wrap the student before training, save and restore its adapter, merge it.

``DistillConfig(lora_r=16)`` (``odistill distill --lora-r 16``) trains low-rank adapters instead of the
student's weights: :func:`apply_lora` wraps the student with ``peft.get_peft_model`` (every linear layer
but the LM head by default, ``lora_target_modules`` to choose), only the adapters train, and a
checkpoint holds the adapter in PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``,
loadable with ``peft.PeftModel.from_pretrained``); resuming restores it exactly. :func:`merge_lora`
folds the adapters into the base weights for export (PEFT's ``merge_and_unload``).

A student that is already a PEFT model (wrapped by the user) trains as it is: its own adapters, saved
and restored the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.forward import unwrap_model
from .config import ConfigError

__all__ = [
    "apply_lora",
    "is_peft_model",
    "merge_lora",
    "load_adapter_weights",
    "lora_wraps_lm_head",
    "ADAPTER_FILE",
]

#: The adapter weights PEFT's ``save_pretrained`` writes.
ADAPTER_FILE = "adapter_model.safetensors"


def is_peft_model(model) -> bool:
    """True for a ``peft.PeftModel`` (also inside a distributed wrapper)."""
    model = unwrap_model(model)
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def apply_lora(student, config):
    """The student with LoRA adapters (``config.lora_r`` > 0), or the student as it is.

    Raises:
        ConfigError: PEFT is not installed, or the student is already a PEFT model and ``lora_r`` asks
            for more adapters.
    """
    if not config.lora_r:
        return student
    if is_peft_model(student):
        raise ConfigError(
            "the student is already a PEFT model: leave lora_r at 0 to train its adapters, or pass the base "
            "model to have odistill add LoRA adapters"
        )
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ConfigError(
            'lora_r > 0 needs peft: pip install "odistill[lora]" (or pip install peft)'
        ) from error
    targets = config.lora_target_modules or "all-linear"
    if targets != "all-linear":
        targets = [name.strip() for name in targets.split(",") if name.strip()]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(student, lora)
    except ValueError as error:  # e.g. target modules that do not exist in this model
        raise ConfigError(f"LoRA could not wrap the student: {error}") from error


def lora_wraps_lm_head(model) -> bool:
    """True when a PEFT adapter sits on the model's output layer (the fused LM-head loss cannot use it)."""
    model = unwrap_model(model)
    if not is_peft_model(model):
        return False
    head = model.get_base_model().get_output_embeddings()
    return head is not None and any(hasattr(head, attr) for attr in ("lora_A", "base_layer"))


def load_adapter_weights(student, path: Path) -> None:
    """Load the adapter a checkpoint holds into a PEFT student (exactly: the same tensors)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = Path(path) / ADAPTER_FILE
    if not file.is_file():
        raise ValueError(
            f"checkpoint {path} holds no LoRA adapter ({ADAPTER_FILE}): it was not saved from a LoRA run"
        )
    result = set_peft_model_state_dict(unwrap_model(student), load_file(file))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this student's adapters: unexpected {unexpected[:5]}"
        )


def merge_lora(student) -> torch.nn.Module:
    """The student with its LoRA adapters folded into the base weights, as a plain model (for export:
    ``merge_lora(result.student).save_pretrained(folder)``); a model without adapters comes back as it is."""
    student = unwrap_model(student)
    return student.merge_and_unload() if is_peft_model(student) else student
