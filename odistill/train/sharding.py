"""Fully sharded data parallelism (FSDP2, torch's ``fully_shard``) for the student, and the teacher if asked.

Data parallelism (DDP) keeps a whole copy of the student, its gradients and its optimizer state in every
process. FSDP splits all three across the processes: each holds 1/N of every parameter, gathers a layer's
full weights just before that layer runs and frees them after, and reduce-scatters the gradients. The
student then fits when its weights and Adam state do not fit in one device.

How to turn it on (either way, the same code path on CPU and GPU):

* ``accelerate launch --config_file configs/accelerate/fsdp.yaml train.py`` (a config with
  ``distributed_type: FSDP`` and ``fsdp_version: 2``); its ``fsdp_reshard_after_forward``,
  ``fsdp_offload_params`` and ``fsdp_transformer_layer_cls_to_wrap`` are honoured;
* or ``DistillConfig(fsdp=True)`` under any launcher with several processes (``torchrun``).

odistill applies ``fully_shard`` itself (one unit per decoder layer, then the root), also on CPU with the
gloo backend, where accelerate would fall back to plain data parallelism. What it changes in the loop:

* **The teacher** is replicated by default (each process holds it whole: no communication in its forward
  passes); ``fsdp_shard_teacher=True`` shards it too, for a teacher that does not fit in one device.
* **Sampling** runs through the sharded student (each forward pass gathers the layers it needs). Every
  process must run the same number of forward passes, so the decode loop stops when *all* processes'
  rows have finished (:func:`odistill.core.sampler.stop_together`), not when this process's rows have.
* **Checkpoints** gather the full weights and the full optimizer state on every process (a collective),
  and the main process writes them: the folder is the same as without FSDP (``save_pretrained``
  files), so it loads anywhere; resuming shards it again, with or without FSDP, on any number of
  processes.
* **Evaluation** (``eval_fn``) runs on every process, because the sharded student's forward pass needs
  them all; the main process's metrics go into the history.
* **The result**: :func:`odistill.train.checkpoint.save_student` (``od.save_student``) writes the
  trained student's full weights (call it on every process); ``DistillResult.student`` stays the
  sharded module.

Not combined with FSDP (a clear error): ``fused_lm_head`` (it reads the LM head's weight outside the
forward pass, where FSDP keeps only a shard) and LoRA students (their trainable state is small: use
data parallelism).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .config import ConfigError, DistillConfig

__all__ = [
    "FSDPSettings",
    "fsdp_settings",
    "shard_model",
    "is_sharded",
    "full_state_dict",
    "full_optimizer_state",
    "load_full_state",
    "gradient_sync_fsdp",
    "total_norm",
]


@dataclass(frozen=True)
class FSDPSettings:
    """How to shard: ``reshard_after_forward`` frees gathered weights after each forward pass (ZeRO-3;
    False keeps them until the backward pass: ZeRO-2-like, more memory, less communication);
    ``shard_teacher`` shards the teacher too; ``wrap`` names the layer classes that become one unit
    each (None: the model's ``_no_split_modules``, its decoder layers); ``offload`` keeps the shards in
    CPU memory between uses."""

    reshard_after_forward: bool = True
    shard_teacher: bool = False
    wrap: tuple[str, ...] | None = None
    offload: bool = False


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "full_shard")


def fsdp_settings(config: DistillConfig, accelerator) -> FSDPSettings | None:
    """The FSDP settings of this run, or None for no sharding.

    Sharding is on when ``config.fsdp`` is, or when the run was started by ``accelerate launch`` with an
    FSDP config (``ACCELERATE_USE_FSDP=true`` in the environment; accelerate sets it on CPU as well).
    """
    from_launcher = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not (config.fsdp or from_launcher):
        if config.fsdp_shard_teacher:
            raise ConfigError(
                "fsdp_shard_teacher=True needs FSDP: set fsdp=True or launch with an FSDP config"
            )
        return None
    version = os.environ.get("FSDP_VERSION", "2") if from_launcher else "2"
    if version != "2":
        raise ConfigError(
            f"odistill shards with FSDP2 (torch's fully_shard); the accelerate config asks for fsdp_version "
            f"{version}: set fsdp_version: 2 in it (configs/accelerate/fsdp.yaml is an example)"
        )
    if config.fused_lm_head:
        raise ConfigError(
            "fused_lm_head=True reads the student's LM-head weight outside its forward pass, where FSDP "
            "holds only this process's shard: set fused_lm_head=False with FSDP"
        )
    if config.sampler_backend == "vllm":
        raise ConfigError(
            "sampler_backend='vllm' loads the student's full weights into an engine in every process, "
            "which FSDP does not hold: use sampler_backend='hf' with FSDP, or data parallelism with vLLM"
        )
    if config.lora_r:
        raise ConfigError(
            "LoRA students are not sharded with FSDP here: their trainable state is small, so run them "
            "with data parallelism (drop fsdp / use a DDP accelerate config)"
        )
    if accelerator.num_processes > 1 and not torch.distributed.is_initialized():
        raise ConfigError("FSDP needs an initialised process group: launch with accelerate or torchrun")
    wrap = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP") if from_launcher else None
    return FSDPSettings(
        reshard_after_forward=_env_flag("FSDP_RESHARD_AFTER_FORWARD", True) if from_launcher else True,
        shard_teacher=config.fsdp_shard_teacher,
        wrap=tuple(n.strip() for n in wrap.split(",") if n.strip()) if wrap else None,
        offload=_env_flag("FSDP_OFFLOAD_PARAMS", False) if from_launcher else False,
    )


def _mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    if not torch.distributed.is_initialized():  # one process: a mesh of one (useful for a dry run)
        raise ConfigError(
            "FSDP needs a process group: launch with accelerate or torchrun (even for one process)"
        )
    return init_device_mesh(device.type, (torch.distributed.get_world_size(),))


def _units(model: torch.nn.Module, wrap: tuple[str, ...] | None) -> list[torch.nn.Module]:
    names = set(wrap or getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise ConfigError(
            f"{type(model).__name__} names no layer classes to shard one by one (_no_split_modules is "
            "empty): set fsdp_transformer_layer_cls_to_wrap in the accelerate config"
        )
    units = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if not units:
        raise ConfigError(
            f"no module of {type(model).__name__} is of the classes to wrap {sorted(names)}: check "
            "fsdp_transformer_layer_cls_to_wrap"
        )
    return units


def shard_model(
    model: torch.nn.Module, settings: FSDPSettings, device: torch.device, mixed_precision: str = "no"
) -> torch.nn.Module:
    """Shard ``model`` in place with ``fully_shard``: each decoder layer one unit, then the root (which
    takes the embeddings, the final norm and the LM head). Returns the same module (now an FSDPModule).

    ``mixed_precision`` "bf16"/"fp16": the gathered weights are cast to that dtype for compute and the
    gradients reduced in float32 (FSDP's MixedPrecisionPolicy; the shards stay float32)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mesh = _mesh(device)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    policy = (
        MixedPrecisionPolicy(param_dtype=dtypes[mixed_precision], reduce_dtype=torch.float32)
        if mixed_precision in dtypes
        else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy() if settings.offload and device.type != "cpu" else OffloadPolicy()
    kwargs = dict(mesh=mesh, reshard_after_forward=settings.reshard_after_forward, mp_policy=policy)
    for unit in _units(model, settings.wrap):
        fully_shard(unit, offload_policy=offload, **kwargs)
    fully_shard(model, offload_policy=offload, **kwargs)
    return model


def is_sharded(model) -> bool:
    """Whether ``model`` was sharded with ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of a sharded model, on the CPU. A collective: call it on every
    process; the main process (rank 0) gets the whole dict, the others an empty one (torch's
    ``cpu_offload`` keeps a single full copy, on rank 0)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer state keyed by parameter name, unsharded (a collective; on rank 0 only, like
    :func:`full_state_dict`)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _inner(optimizer), options=_options(cpu_offload=True))


def load_full_state(model: torch.nn.Module, weights: dict, optimizer=None, optimizer_state=None) -> None:
    """Load full weights (and a name-keyed optimizer state) into a sharded or plain model; every process
    passes the whole dicts and keeps its shard. Tied weights saved once are filled from their twin."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    expected = set(model.state_dict())
    missing = sorted(expected - set(weights))
    tied = [k for k in missing if k.endswith("lm_head.weight")]
    real_missing = [k for k in missing if k not in tied]
    unexpected = sorted(set(weights) - expected)
    if real_missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit this student: missing {real_missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    set_model_state_dict(model, weights, options=_options(strict=False))
    if optimizer is not None and optimizer_state is not None:
        set_optimizer_state_dict(model, _inner(optimizer), optimizer_state, options=_options())


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


@contextlib.contextmanager
def gradient_sync_fsdp(model, sync: bool):
    """A micro-batch's context under FSDP: without ``sync`` the gradients accumulate unsharded and are
    reduce-scattered on the last micro-batch of the step (FSDP2's ``set_requires_gradient_sync``)."""
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def total_norm(grad_norm) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP's clipping returns a replicated DTensor)."""
    full = getattr(grad_norm, "full_tensor", None)
    return full() if callable(full) else grad_norm
