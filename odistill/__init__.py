"""odistill — on-policy distillation of language models, taught in notebooks.

A student LM learns from a teacher LM. Off-policy distillation trains the student on sequences it did
not write, usually with forward KL(teacher ‖ student); on-policy distillation lets the student sample,
the teacher score every sampled token, and the student minimise reverse KL(student ‖ teacher).

The package has six parts (``docs/architecture.md`` draws them)::

    odistill.core       the pipe: sampler, teacher, divergences, losses (any Hugging Face causal LM)
    odistill.train      distill(): config, the loop of named steps, checkpoints, loggers
    odistill.bench      the lab bench: tasks, tokenizer, tiny models and checkpoints, SFT, evaluation
    odistill.classroom  plots, widgets and exercise checkers for the notebooks
    odistill.serve      the teacher server (``odistill serve-teacher``) for RemoteTeacher clients
    odistill.cli        the ``odistill`` command

The public API is re-exported here and loaded on first use, so ``import odistill`` is cheap and
``import odistill.core.divergences`` loads neither the training loop nor the lab bench.
"""

from __future__ import annotations

import importlib

from . import compat

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("MASKED_LOG_PROB", "NonFiniteLossError", "token_log_probs"), "odistill.core.tensor_ops"),
    **dict.fromkeys(
        (
            "forward_kl",
            "reverse_kl",
            "generalized_jsd",
            "skew_forward_kl",
            "skew_reverse_kl",
            "total_variation",
            "kl_k1",
            "kl_k2",
            "kl_k3",
            "DIVERGENCES",
        ),
        "odistill.core.divergences",
    ),
    **dict.fromkeys(("Rollouts", "rollouts_from_text"), "odistill.core.rollouts"),
    "completion_logits": "odistill.core.forward",
    "sample": "odistill.core.sampler",
    **dict.fromkeys(("Teacher", "TeacherScorer", "TeacherScores"), "odistill.core.teacher"),
    **dict.fromkeys(
        ("RemoteTeacher", "RemoteTeacherError", "TeacherUnavailableError"), "odistill.core.remote"
    ),
    **dict.fromkeys(("distillation_loss", "sampled_token_loss"), "odistill.core.loss"),
    **dict.fromkeys(("DistillConfig", "ConfigError", "PRESETS"), "odistill.train.config"),
    **dict.fromkeys(("distill", "DistillResult"), "odistill.train.trainer"),
    "save_student": "odistill.train.checkpoint",
    "DatasetError": "odistill.train.data",
    **dict.fromkeys(("Task", "get_task", "list_tasks"), "odistill.bench.tasks"),
    "build_char_tokenizer": "odistill.bench.tokenizer",
    **dict.fromkeys(
        ("MODEL_SIZES", "build_model", "load_model", "list_shipped", "read_metadata"), "odistill.bench.models"
    ),
    "train_sft": "odistill.bench.sft",
    **dict.fromkeys(("evaluate", "generate_completions"), "odistill.bench.evaluation"),
}

#: Modules reachable as attributes (``odistill.experiments``, ``from odistill import viz``).
_MODULES = {
    "experiments": "odistill.bench.experiments",
    "viz": "odistill.classroom.viz",
    "core": "odistill.core",
    "train": "odistill.train",
    "bench": "odistill.bench",
    "classroom": "odistill.classroom",
    "serve": "odistill.serve",
    "cli": "odistill.cli",
}

__all__ = ["__version__", *_EXPORTS, "experiments"]

compat.install_moved_modules()


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif f"odistill.{name}" in compat.MOVED_MODULES:  # a 0.1 module path: warns, gives its new home
        value = importlib.import_module(f"odistill.{name}")
    else:
        raise AttributeError(f"module 'odistill' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
