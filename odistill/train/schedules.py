"""Learning-rate schedules, one registry for :func:`odistill.distill` and :func:`odistill.train_sft`.

A schedule is a factor of the peak learning rate at each optimizer step ``s = 0, 1, …, total − 1``,
after a linear warm-up over the first ``warmup`` steps::

    warm-up      (s + 1) / warmup                    for s < warmup (the first step is not wasted at 0)
    then, with progress p = (s − warmup) / max(1, total − warmup):
    constant     1
    cosine       ½ (1 + cos(π · min(1, p)))          from 1 down to 0 at the last step
    linear       max(0, 1 − p)

Add one by writing ``factor(progress) -> float`` and registering it in :data:`SCHEDULES`.

**λ schedules** (:data:`LMBDA_SCHEDULES`) move the on-policy probability λ over training, from
``lmbda_start`` at the first step to ``lmbda`` at the last (GKD's λ, e.g. a hand-over from off-policy to
on-policy for a weak student). A λ schedule is ``progress(step, total_steps) -> p`` in [0, 1] for
``step = 0 … total_steps`` (0 the first optimizer step, ``total_steps`` the last), and
``λ = lmbda_start + (lmbda − lmbda_start) · p``::

    constant     p = 1             λ = lmbda throughout (lmbda_start unused)
    linear       p = step / total_steps
    cosine       p = ½ (1 − cos(π · step / total_steps))   slow start and finish

Register your own with :func:`register_lmbda_schedule`; a config names it, so it stays JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = [
    "SCHEDULES",
    "lr_factor",
    "make_scheduler",
    "LMBDA_SCHEDULES",
    "register_lmbda_schedule",
    "lmbda_at",
]

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


#: Registered λ schedules: name → ``progress(step, total_steps)`` in [0, 1] (see the module docstring).
LMBDA_SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, total_steps: 1.0,
    "linear": lambda step, total_steps: step / total_steps if total_steps else 1.0,
    "cosine": lambda step, total_steps: (
        0.5 * (1.0 - math.cos(math.pi * step / total_steps)) if total_steps else 1.0
    ),
}


def register_lmbda_schedule(name: str, progress: Callable[[int, int], float]) -> None:
    """Add ``progress(step, total_steps) -> p in [0, 1]`` to :data:`LMBDA_SCHEDULES` under ``name`` (then
    ``DistillConfig(lmbda_schedule=name, lmbda_start=…, lmbda=…)``). It is checked at every step of
    ``0 … 100`` now, so a broken schedule fails here and not in the middle of a run."""
    if not (isinstance(name, str) and name) or not callable(progress):
        raise TypeError("register_lmbda_schedule(name, progress): a non-empty name and a callable")
    for step in range(101):
        _checked_progress(name, progress, step, 100)
    LMBDA_SCHEDULES[name] = progress


def _checked_progress(name, progress, step: int, total_steps: int) -> float:
    p = progress(step, total_steps)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ValueError(
            f"λ schedule {name!r} returned {p!r} at step {step} of {total_steps}: it must return a number "
            "in [0, 1] (the fraction of the way from lmbda_start to lmbda)"
        )
    return float(p)


def lmbda_at(name: str, step: int, total_steps: int, start: float, end: float) -> float:
    """λ at optimizer step ``step`` (0-based) of ``total_steps`` (``step = total_steps − 1`` is the last).

    Example:
        >>> [lmbda_at("linear", s, 5, 0.0, 1.0) for s in range(5)]
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if name not in LMBDA_SCHEDULES:
        raise ValueError(f"unknown λ schedule {name!r}; schedules: {sorted(LMBDA_SCHEDULES)}")
    p = _checked_progress(name, LMBDA_SCHEDULES[name], step, total_steps - 1)
    return start + (end - start) * p
