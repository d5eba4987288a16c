"""odistill — on-policy distillation of language models, taught in notebooks.

A student LM learns from a teacher LM. Off-policy distillation trains the student on sequences it did
not write, usually with forward KL(teacher ‖ student); on-policy distillation lets the student sample,
the teacher score every sampled token, and the student minimise reverse KL(student ‖ teacher).

The public API is re-exported here; see the documentation for a tour.
"""

from . import experiments
from .config import PRESETS, ConfigError, DistillConfig
from .divergences import (
    MASKED_LOG_PROB,
    NonFiniteLossError,
    forward_kl,
    generalized_jsd,
    kl_k1,
    kl_k2,
    kl_k3,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    token_log_probs,
    total_variation,
)
from .evaluation import evaluate, generate_completions
from .loss import distillation_loss, sampled_token_loss
from .models import MODEL_SIZES, build_model, list_shipped, load_model, read_metadata
from .rollouts import Rollouts, completion_logits, rollouts_from_text
from .sampler import sample
from .sft import train_sft
from .tasks import Task, build_char_tokenizer, get_task, list_tasks
from .teacher import TeacherScorer, TeacherScores
from .trainer import DatasetError, DistillResult, distill

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "MASKED_LOG_PROB",
    "NonFiniteLossError",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "token_log_probs",
    # pipeline
    "Rollouts",
    "sample",
    "rollouts_from_text",
    "completion_logits",
    "TeacherScorer",
    "TeacherScores",
    "distillation_loss",
    "sampled_token_loss",
    "DistillConfig",
    "ConfigError",
    "PRESETS",
    "distill",
    "DistillResult",
    "DatasetError",
    # lab bench
    "Task",
    "get_task",
    "list_tasks",
    "build_char_tokenizer",
    "MODEL_SIZES",
    "build_model",
    "load_model",
    "list_shipped",
    "read_metadata",
    "train_sft",
    "evaluate",
    "generate_completions",
    "experiments",
]
