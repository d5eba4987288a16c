"""Tiny language models from ``transformers`` configs, and one loader for shipped, local and hub models.

The lab bench's models are ordinary Hugging Face ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``) models,
just very small, so everything in odistill that works on them works on real models too::

    MODEL_SIZES  name → (layers, hidden size, heads, MLP width)
    "tiny"    2 × 64     ≈ 0.13 M parameters   a student too small to copy its teacher
    "small"   2 × 128    ≈ 0.53 M
    "medium"  4 × 128    ≈ 1.05 M
    "base"    4 × 256    ≈ 4.2 M               the biggest lab-bench teacher (≈ 8.4 MB in bf16)
    "student" = "tiny",  "teacher" = "base"  (aliases)

``load_model(name_or_path)`` returns ``(model, tokenizer)`` for a shipped checkpoint name
(``"addition-teacher"``; see :func:`list_shipped`), a local folder written by ``save_pretrained``, or a
Hugging Face hub id (``"Qwen/Qwen2.5-0.5B-Instruct"``, on a machine that can reach the hub).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from ..train.checkpoint import quiet_transformers, write_dir_atomically

__all__ = [
    "MODEL_SIZES",
    "CHECKPOINT_DIR",
    "build_model",
    "count_parameters",
    "list_shipped",
    "load_model",
    "save_checkpoint",
    "resolve_device",
    "read_metadata",
]

#: Named model sizes. ``layers`` × ``hidden`` with ``heads`` attention heads and an MLP of width ``mlp``.
MODEL_SIZES: dict[str, dict] = {
    "tiny": {"layers": 2, "hidden": 64, "heads": 4, "mlp": 256},
    "small": {"layers": 2, "hidden": 128, "heads": 4, "mlp": 512},
    "medium": {"layers": 4, "hidden": 128, "heads": 4, "mlp": 512},
    "base": {"layers": 4, "hidden": 256, "heads": 8, "mlp": 1024},
}
MODEL_SIZES["student"] = MODEL_SIZES["tiny"]
MODEL_SIZES["teacher"] = MODEL_SIZES["base"]

#: Where the shipped checkpoints live (``odistill/bench/checkpoints/<task>-teacher/``, ``<task>-student/``).
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"

#: The file in a checkpoint folder that records how it was made (task, recipe, accuracy).
METADATA_FILE = "odistill.json"


_ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def _make_config(size: str | dict, vocab_size: int, *, arch: str, max_positions: int, special_ids: dict):
    if isinstance(size, str):
        if size not in MODEL_SIZES:
            raise ValueError(
                f"unknown model size {size!r}; the sizes are {sorted(MODEL_SIZES)} (or pass a config)"
            )
        size = MODEL_SIZES[size]
    missing = {"layers", "hidden", "heads", "mlp"} - set(size)
    if missing:
        raise ValueError(f"a size dict needs the keys layers, hidden, heads, mlp; missing {sorted(missing)}")
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    config_cls, _ = _ARCHS[arch]
    return config_cls(
        vocab_size=vocab_size,
        hidden_size=size["hidden"],
        intermediate_size=size["mlp"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        **special_ids,
    )


def build_model(
    size_or_config: str | dict | PretrainedConfig,
    vocab_size: int | None = None,
    *,
    tokenizer=None,
    seed: int = 0,
    arch: str = "llama",
    max_positions: int = 128,
) -> PreTrainedModel:
    """A freshly initialised causal LM: a named size, a size dict, or any ``transformers`` config.

    Args:
        size_or_config: a key of :data:`MODEL_SIZES` (``"tiny"``, ``"base"``, ``"student"`` …), a dict with
            ``layers, hidden, heads, mlp``, or a ``PretrainedConfig`` (used as it is).
        vocab_size: vocabulary size; taken from ``tokenizer`` (``len(tokenizer)``) when omitted.
        tokenizer: optional; supplies ``vocab_size`` and the pad/bos/eos token ids of the config.
        seed: seeds the initialisation (same seed → same weights).
        arch: ``"llama"`` (default) or ``"qwen2"`` for a named size.
        max_positions: longest sequence (prompt + completion) the model handles.

    Example:
        >>> model = build_model("tiny", vocab_size=16)
        >>> type(model).__name__, model.config.num_hidden_layers, model.config.hidden_size
        ('LlamaForCausalLM', 2, 64)
    """
    special_ids = {}
    if tokenizer is not None:
        vocab_size = len(tokenizer) if vocab_size is None else vocab_size
        special_ids = {
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
    if isinstance(size_or_config, PretrainedConfig):
        config = size_or_config
    else:
        if vocab_size is None:
            raise ValueError("build_model needs vocab_size (or tokenizer=...) to size the embedding")
        config = _make_config(
            size_or_config, vocab_size, arch=arch, max_positions=max_positions, special_ids=special_ids
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    if tokenizer is not None:
        for key, value in special_ids.items():
            setattr(model.generation_config, key, value)
    return model


def list_shipped() -> list[str]:
    """Names of the checkpoints shipped inside the package, e.g.
    ``["addition-student", "addition-teacher"]``."""
    if not CHECKPOINT_DIR.is_dir():
        return []
    return sorted(d.name for d in CHECKPOINT_DIR.iterdir() if (d / "config.json").is_file())


def _resolve(name_or_path: str | os.PathLike) -> str:
    """A shipped name → its folder; an existing folder → itself; a possible hub id → itself; else an error."""
    text = os.fspath(name_or_path)
    if text in list_shipped():
        return str(CHECKPOINT_DIR / text)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{text!r} is a folder but has no config.json: point at a folder written by "
                "model.save_pretrained(...) (and tokenizer.save_pretrained(...))"
            )
        return str(path)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.exists()
    if looks_like_hub_id:
        return text
    raise FileNotFoundError(
        f"no model called {text!r}: it is not a shipped checkpoint "
        f"({', '.join(list_shipped()) or 'none built'}), "
        "not an existing local folder, and not a hub id of the form 'organisation/name'. "
        "Rebuild the shipped checkpoints with `bash scripts/build_checkpoints.sh` if they are missing."
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Load ``(model, tokenizer)`` from a shipped name, a local ``save_pretrained`` folder, or a hub id.

    The model comes back in eval mode, on ``device``, in ``dtype`` (float32 by default, even when the
    checkpoint is stored in bf16, so that small-model experiments are exact and reproducible on CPU).

    Args:
        name_or_path: ``"addition-teacher"`` (see :func:`list_shipped`), ``"path/to/folder"``, or
            ``"organisation/model"`` on the Hugging Face hub.
        dtype: parameter dtype after loading.
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` …

    Example:
        >>> model, tokenizer = load_model("addition-teacher")  # doctest: +SKIP
        >>> model.training, next(model.parameters()).dtype  # doctest: +SKIP
        (False, torch.float32)
    """
    path = _resolve(name_or_path)
    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as error:
        if Path(path).is_dir():
            raise
        raise FileNotFoundError(
            f"could not load {path!r}: it is not a shipped checkpoint ({', '.join(list_shipped())}) "
            f"or a local folder, and loading it from the Hugging Face hub failed ({error}). "
            "Check the name, your network, or HF_HUB_OFFLINE."
        ) from error
    if (
        tokenizer.pad_token is None
    ):  # many hub models have none: pad with EOS (masks keep padding out of losses)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = model.to(resolve_device(device)).eval()
    return model, tokenizer


def save_checkpoint(
    model, tokenizer, out_dir, *, dtype: torch.dtype | None = torch.bfloat16, metadata=None
) -> Path:
    """Save ``model`` and ``tokenizer`` to ``out_dir`` (``save_pretrained``), optionally cast to ``dtype``.

    The folder is written atomically (:func:`odistill.train.checkpoint.write_dir_atomically`): an existing
    ``out_dir`` is replaced only once the new one is complete. The model passed in is not modified (a
    copy is cast). ``metadata`` (a JSON-able dict: task, recipe, accuracy …) is written to
    ``odistill.json`` next to the weights.
    """
    to_save = copy.deepcopy(model).to(dtype) if dtype is not None else model

    def write(folder: Path) -> None:
        with quiet_transformers():
            to_save.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        if metadata is not None:
            (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

    return write_dir_atomically(out_dir, write)


def read_metadata(name_or_path: str | os.PathLike) -> dict:
    """The ``odistill.json`` of a shipped name or local folder (``{}`` when there is none, e.g. hub
    models)."""
    try:
        path = Path(_resolve(name_or_path))
    except FileNotFoundError:
        return {}
    file = path / METADATA_FILE
    return json.loads(file.read_text()) if file.is_file() else {}
