"""Learning-rate schedules, one registry for :func:`odistill.distill` and :func:`odistill.train_sft`.

A schedule is a factor of the peak learning rate at each optimizer step ``s = 0, 1, …, total − 1``,
after a linear warm-up over the first ``warmup`` steps::

    warm-up      (s + 1) / warmup                    for s < warmup (the first step is not wasted at 0)
    then, with progress p = (s − warmup) / max(1, total − warmup):
    constant     1
    cosine       ½ (1 + cos(π · min(1, p)))          from 1 down to 0 at the last step
    linear       max(0, 1 − p)

Add one by writing ``factor(progress) -> float`` and registering it in :data:`SCHEDULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["SCHEDULES", "lr_factor", "make_scheduler"]

#: Registered schedules: name → factor of the peak learning rate as a function of progress in [0, ∞).
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))),
    "linear": lambda progress: max(0.0, 1.0 - progress),
}


def lr_factor(name: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The factor of the peak learning rate at optimizer step ``step`` (0-based); see the module docstring.

    Example:
        >>> [round(lr_factor("cosine", s, 4, warmup_steps=2), 3) for s in range(4)]
        [0.5, 1.0, 1.0, 0.5]
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; schedules: {sorted(SCHEDULES)}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    return SCHEDULES[name]((step - warmup_steps) / max(1, total_steps - warmup_steps))


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` that follows :func:`lr_factor` (step it once per optimizer step)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {name!r}; schedules: {sorted(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(name, step, total_steps, warmup_steps)
    )
