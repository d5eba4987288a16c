"""Checkpoints: one atomic folder writer, the training state it saves, and resuming from it.

Every checkpoint odistill writes (a training checkpoint of :func:`odistill.distill`, a lab-bench model
of ``odistill train-teacher``) goes through :func:`write_dir_atomically`: the folder is written next to
its target and renamed into place, so a crash or Ctrl-C never leaves half a checkpoint. A training
checkpoint holds everything needed to continue to the same numbers::

    checkpoint-000050/
        config.json, model.safetensors, tokenizer files   (save_pretrained: loadable on their own)
            (a LoRA run: adapter_config.json, adapter_model.safetensors: PEFT's format)
        trainer_state.pt      optimizer, scheduler, torch and Python random states, step
                              (an FSDP run: the optimizer state keyed by parameter name, unsharded)
        trainer_state.json    step and the history so far (readable)
        distill_config.json   the DistillConfig of the run
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .config import DistillConfig
from .lora import is_peft_model, load_adapter_weights
from .sharding import full_state_dict, is_sharded, load_full_state

__all__ = [
    "write_dir_atomically",
    "save_training_checkpoint",
    "load_training_checkpoint",
    "latest_checkpoint",
    "save_student",
]

STATE_FILE = "trainer_state.pt"
HISTORY_FILE = "trainer_state.json"
CONFIG_FILE = "distill_config.json"


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' "Loading weights" / "Writing model shards" bars while saving or loading."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def write_dir_atomically(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(folder)`` on a fresh folder next to ``target``, then rename it to ``target``.

    An existing ``target`` is replaced only once the new folder is complete; on any error the partial
    folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
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
    return target


def save_training_checkpoint(
    path: str | Path,
    *,
    student,
    tokenizer,
    optimizer,
    scheduler,
    config: DistillConfig,
    step: int,
    history: list[dict],
    rngs: dict,
    weights: dict | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write a training checkpoint (see the module docstring) atomically to ``path``.

    ``weights`` / ``optimizer_state``: the full state of a sharded student, gathered beforehand
    (:func:`odistill.train.sharding.full_state_dict`, ``full_optimizer_state``); the optimizer state is
    then keyed by parameter name. By default the student's and the optimizer's own state dicts are saved.
    """

    def write(tmp: Path):
        with quiet_transformers():
            student.save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
        torch.save(
            {
                "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
                "optimizer_keys": "index" if optimizer_state is None else "name",
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.random.get_rng_state(),
                "python_rngs": {name: r.getstate() for name, r in rngs.items()},
                "step": step,
            },
            tmp / STATE_FILE,
        )
        (tmp / HISTORY_FILE).write_text(json.dumps({"step": step, "history": history}, indent=1))
        config.save(tmp / CONFIG_FILE)

    return write_dir_atomically(path, write)


def load_training_checkpoint(
    path: Path, *, student, optimizer, scheduler, rngs: dict, config: DistillConfig
) -> tuple[int, list[dict]]:
    """Load a training checkpoint into the live objects; return (the first step to run, the history so
    far)."""

    state = torch.load(path / STATE_FILE, weights_only=False)
    saved = DistillConfig.load(path / CONFIG_FILE)
    reproducing = ("seed", "lmbda", "lmbda_schedule", "lmbda_start", "batch_size", "num_generations", "steps")
    differ = [name for name in reproducing if getattr(saved, name) != getattr(config, name)]
    if differ:
        warnings.warn(
            f"resuming {path} with a config that differs from the saved one ({', '.join(differ)}); "
            "the run will not reproduce an uninterrupted one",
            stacklevel=3,
        )
    by_name = state.get("optimizer_keys") == "name"
    if is_sharded(student) or by_name:  # FSDP on either side: full state in, each process keeps its shard
        weights = _read_weights(path)
        named = state["optimizer"] if by_name else _keyed_by_name(state["optimizer"], student)
        load_full_state(student, weights, optimizer, named)
    elif is_peft_model(student):  # a LoRA run saved its adapter only, in PEFT's format
        load_adapter_weights(student, path)
    else:
        weights = _read_weights(path)
        missing, unexpected = student.load_state_dict(weights, strict=False)
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied embeddings: saved once
        if real_missing or unexpected:
            raise ValueError(
                f"checkpoint {path} does not fit this student: missing {real_missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    if not (is_sharded(student) or by_name):
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.random.set_rng_state(state["torch_rng"])
    for name, rng in rngs.items():
        rng.setstate(state["python_rngs"][name])
    history = json.loads((path / HISTORY_FILE).read_text())["history"]
    return int(state["step"]) + 1, history


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder's ``*.safetensors`` files (one or several shards)."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(path.glob("*.safetensors")):
        weights.update(load_file(file))
    return weights


def _keyed_by_name(optimizer_state: dict, student) -> dict:
    """An optimizer state dict keyed by parameter index (``optimizer.state_dict()``) re-keyed by parameter
    name, the form FSDP's loaders take: the optimizer's parameters are the student's trainable ones, in
    order."""
    names = [name for name, p in student.named_parameters() if p.requires_grad]
    groups = optimizer_state["param_groups"]
    if sum(len(g["params"]) for g in groups) != len(names):
        raise ValueError(
            f"the checkpoint's optimizer has {sum(len(g['params']) for g in groups)} parameters, this "
            f"student {len(names)} trainable ones: it was written for another model"
        )
    return {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in groups],
    }


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``checkpoint-NNNNNN`` folders in ``output_dir``; returns them."""
    found = sorted(p for p in Path(output_dir).glob("checkpoint-*") if (p / STATE_FILE).is_file())
    doomed = found[: max(0, len(found) - keep)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def latest_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder to resume from: ``path`` itself if it is one, else its newest ``checkpoint-*``.

    Raises:
        FileNotFoundError: no checkpoint there (with what was looked for).
    """
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    candidates = (
        sorted(p for p in path.glob("checkpoint-*") if (p / STATE_FILE).is_file()) if path.is_dir() else []
    )
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint to resume from in {str(path)!r}: expected a folder written by distill() (with "
            f"{STATE_FILE}) or an output_dir holding checkpoint-NNNNNN folders"
        )
    return candidates[-1]


def save_student(student, path, tokenizer=None, *, merge_lora: bool = True) -> None:
    """Write the trained student to ``path`` with ``save_pretrained`` (and the tokenizer), atomically.

    Works the same in one process, under data parallelism and under FSDP: call it on **every** process;
    under FSDP the full weights are gathered first (a collective), and only the main process writes.
    A LoRA student is merged into its base weights first unless ``merge_lora=False`` (then the adapter
    is written, in PEFT's format).
    """
    from .lora import merge_lora as merge

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    main = not distributed or torch.distributed.get_rank() == 0
    weights = full_state_dict(student) if is_sharded(student) else None
    if main:
        model = student if weights is not None or not merge_lora else merge(student)

        def write(tmp):
            with quiet_transformers():
                model.save_pretrained(tmp, state_dict=weights)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)

        write_dir_atomically(path, write)
    if distributed:
        torch.distributed.barrier()
