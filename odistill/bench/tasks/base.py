"""The ``Task`` interface: prompts from a seed, reference answers, and a verifier that scores any string.

A task is a tiny, fully synthetic problem whose answers a program can check, e.g. ``"023+456="`` →
``"0479"``. Everything a distillation experiment needs comes from it:

* ``make_dataset(n, seed, split)`` — a ``datasets.Dataset`` with columns ``prompt`` (raw text),
  ``answer`` (one reference answer) and ``messages`` (the same pair as a chat, for TRL-style code);
* ``score(prompt, completion)`` — 1.0 when the completion is correct (or valid, for tasks with many
  correct answers), 0.0 otherwise, for *any* completion, however malformed;
* ``symbols`` (the characters it uses, for the tokenizer) and ``max_new_tokens`` (answer + EOS).

Train and test prompts never overlap: every prompt belongs to exactly one split, decided by a checksum of
its text (about 10 % of all prompts are held out for ``split="test"``), so a test set drawn with any seed
contains only prompts that no training set can contain.
"""

from __future__ import annotations

import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

from datasets import Dataset

__all__ = ["Task", "TrainingRecipe", "SPLITS", "split_of"]

SPLITS = ("train", "test")
_TEST_BUCKETS = 10  # one prompt in ten is held out


def split_of(prompt: str) -> str:
    """The split a prompt belongs to: ``"test"`` for about 1 prompt in 10, ``"train"`` otherwise.

    Deterministic across runs and machines (CRC-32 of the UTF-8 text, not Python's salted ``hash``).

    Example:
        >>> split_of("023+456="), split_of("000+000=")
        ('train', 'train')
    """
    return "test" if zlib.crc32(prompt.encode("utf-8")) % _TEST_BUCKETS == 0 else "train"


@dataclass(frozen=True)
class TrainingRecipe:
    """How a shipped checkpoint is trained with :func:`odistill.bench.sft.train_sft` (fixed seed ⇒
    reproducible).

    Args:
        size: a key of :data:`odistill.bench.models.MODEL_SIZES`, e.g. ``"base"``.
        steps: optimizer steps (one fresh batch of training prompts each).
        lr: peak learning rate of AdamW (cosine schedule with warm-up).
        batch_size: sequences per step.
        seed: seeds the model initialisation, the training data and the batch order.
        schedule: ``"cosine"`` (to 0 at the last step) or ``"constant"`` learning rate after warm-up.
    """

    size: str
    steps: int
    lr: float
    batch_size: int = 64
    seed: int = 0
    schedule: str = "cosine"


class Task(ABC):
    """A synthetic task with checkable answers. Subclasses define the prompt, the answer and the verifier.

    Class attributes every task sets: ``name`` (registry key), ``is_multi_answer`` (several correct
    answers per prompt), ``teacher_recipe`` and ``student_recipe`` (how the shipped checkpoints are made).
    Instance attributes: ``symbols`` (every character a prompt or answer can use) and ``max_new_tokens``.
    """

    name: str = "task"
    is_multi_answer: bool = False
    teacher_recipe: TrainingRecipe
    student_recipe: TrainingRecipe
    symbols: str
    max_new_tokens: int

    # -- what a subclass implements -------------------------------------------------------------

    @abstractmethod
    def sample_prompt(self, rng: random.Random) -> str:
        """One random prompt (raw text, e.g. ``"023+456="``)."""

    @abstractmethod
    def sample_answer(self, prompt: str, rng: random.Random) -> str:
        """One correct answer to ``prompt`` (a random one, for tasks with several)."""

    @abstractmethod
    def score(self, prompt: str, completion: str) -> float:
        """1.0 if ``completion`` is a correct (or valid) answer to ``prompt``, else 0.0.
        Never raises on it."""

    def reference_answers(self, prompt: str) -> list[str]:
        """Every correct answer to ``prompt`` (one, for single-answer tasks)."""
        return [self.sample_answer(prompt, random.Random(0))]

    # -- shared machinery -----------------------------------------------------------------------

    def config(self) -> dict:
        """The keyword arguments that rebuild this task with :func:`odistill.bench.tasks.get_task`."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def sample_prompts(self, n: int, *, seed: int = 0, split: str = "train") -> list[str]:
        """``n`` distinct prompts of ``split``, the same for the same ``(n, seed, split)``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}:{self.config()}:{split}:{seed}")  # str seeds are stable (sha512)
        prompts: list[str] = []
        seen: set[str] = set()
        attempts, max_attempts = 0, 100 * n + 10_000
        while len(prompts) < n:
            attempts += 1
            if attempts > max_attempts:
                raise ValueError(
                    f"could only find {len(prompts)} distinct {split} prompts for {self!r}, asked for {n}: "
                    "the task has too few prompts; ask for fewer or make the task bigger"
                )
            prompt = self.sample_prompt(rng)
            if prompt not in seen and split_of(prompt) == split:
                seen.add(prompt)
                prompts.append(prompt)
        return prompts

    def make_dataset(self, n: int, *, seed: int = 0, split: str = "train") -> Dataset:
        """A ``datasets.Dataset`` of ``n`` distinct prompts with columns ``prompt``, ``answer``, ``messages``.

        Args:
            n: number of rows.
            seed: the same seed (and split) gives the same rows.
            split: ``"train"`` or ``"test"``; the two never share a prompt.

        Example:
            >>> from odistill.bench.tasks import get_task
            >>> row = get_task("addition").make_dataset(1, seed=0)[0]
            >>> row["prompt"] + row["answer"] == row["messages"][0]["content"] + row["messages"][1]["content"]
            True
        """
        prompts = self.sample_prompts(n, seed=seed, split=split)
        rng = random.Random(f"{self.name}:{self.config()}:{split}:{seed}:answers")
        answers = [self.sample_answer(p, rng) for p in prompts]
        return Dataset.from_dict(
            {
                "prompt": prompts,
                "answer": answers,
                "messages": [_chat(p, a) for p, a in zip(prompts, answers, strict=True)],
            }
        )

    def make_sft_dataset(self, n: int, *, seed: int = 0, role: str = "teacher") -> Dataset:
        """Training data for a shipped checkpoint: ``make_dataset(n, split="train")`` unless a task says
        otherwise.

        A task may add a ``loss_start`` column (an index into ``answer``): supervised training then puts no
        loss on ``answer[:loss_start]``. :class:`~odistill.bench.tasks.sorting.Sorting` uses it to teach its
        teacher how to finish an answer whose beginning someone else wrote.
        """
        if role not in ("teacher", "student"):
            raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
        return self.make_dataset(n, seed=seed, split="train")


def _chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
