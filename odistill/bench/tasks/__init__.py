"""Synthetic tasks with checkable answers — the lab bench for distillation experiments on a laptop CPU.

    >>> from odistill.bench.tasks import get_task, list_tasks
    >>> list_tasks()
    ['addition', 'permutations', 'sorting']
    >>> task = get_task("addition")
    >>> task.make_dataset(2, seed=0, split="test")["prompt"]  # doctest: +SKIP
    ['...+...=', '...+...=']

| task | answers | what it shows |
|---|---|---|
| ``addition`` | one (exact match) | the quick default: ``023+456=`` → ``0479`` |
| ``permutations`` | 120 per prompt (validity) | mode covering (forward KL) vs mode seeking (reverse KL) |
| ``sorting`` | validity; teacher writes them sorted | exposure bias: a student's own slips, \
and recovering from them |
"""

from __future__ import annotations

from ..tokenizer import build_char_tokenizer
from .addition import Addition
from .base import SPLITS, Task, TrainingRecipe, split_of
from .permutations import Permutations
from .sorting import Sorting

__all__ = [
    "Task",
    "TrainingRecipe",
    "SPLITS",
    "split_of",
    "Addition",
    "Permutations",
    "Sorting",
    "TASKS",
    "get_task",
    "list_tasks",
    "build_char_tokenizer",
]

#: The registry: task name → class. Add your own task here (or with ``TASKS["name"] = MyTask``).
TASKS: dict[str, type[Task]] = {"addition": Addition, "permutations": Permutations, "sorting": Sorting}


def list_tasks() -> list[str]:
    """The names :func:`get_task` accepts, sorted."""
    return sorted(TASKS)


def get_task(name: str | Task, **kwargs) -> Task:
    """The task called ``name``, built with ``kwargs`` (e.g. ``get_task("addition", digits=4)``).

    A :class:`Task` instance is returned as it is (so functions can accept either).

    Example:
        >>> get_task("addition", digits=2).make_dataset(1, seed=1)[0]["prompt"][-1]
        '='
    """
    if isinstance(name, Task):
        if kwargs:
            raise ValueError("pass keyword arguments only with a task name, not with a Task instance")
        return name
    if name not in TASKS:
        raise ValueError(
            f"unknown task {name!r}; the tasks are {list_tasks()} (see odistill.bench.tasks.TASKS)"
        )
    return TASKS[name](**kwargs)
