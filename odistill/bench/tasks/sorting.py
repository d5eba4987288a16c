"""Sorting with recovery — long-ish outputs where a student's own early slips decide what comes next.

This is the lab bench's exposure-bias task. See :class:`Sorting` for the design.
"""

from __future__ import annotations

import random
import string

from datasets import Dataset

from .base import Task, TrainingRecipe

__all__ = ["Sorting"]


class Sorting(Task):
    """Write the prompt's letters in alphabetical order: ``"qxbfamoz="`` → ``"abfmoqxz"``.

    Score (validity): 1.0 when the completion uses every letter of the prompt exactly once, in *any* order;
    :meth:`is_sorted_answer` checks the stricter alphabetical order. Validity is what makes recovery
    possible: a model that slipped (wrote ``"abm"`` and skipped ``f``) can still earn full marks by writing
    the missing ``f`` later. With exact-match scoring the first slip would decide everything, and the
    states after it could never matter (why plain addition shows no on-policy gain).

    The teacher is trained to *recover*: half of its training answers start with a corrupted prefix (some
    of the letters in a random order, no loss on them) followed by the rest of the letters in alphabetical
    order, so from any prefix its next token is "the smallest letter not written yet". Its own samples,
    though, are almost always the clean sorted string. So:

    * **off-policy** (teacher samples, or the dataset) shows the student only clean sorted prefixes, where
      "the successor of the last letter" and "the smallest unused letter" agree;
    * **on-policy** (student samples) shows the student its own slipped prefixes, where only the teacher's
      "smallest unused letter" keeps the answer valid — the exposure-bias argument for on-policy distillation.

    Whether that argument wins at equal steps on this task is an experiment, not a property of the task:
    ``scripts/explore_exposure_bias.py`` runs it and records what it measured, and notebook 04 shows the
    exposure bias itself (the student's first slip, and recovery from a corrupted prefix).

    Args:
        length: letters per prompt (distinct, from ``a``–``z``).
        corrupt_fraction: fraction of the teacher's training answers that start with a corrupted prefix.

    Example:
        >>> task = Sorting(length=4)
        >>> task.score("dbca=", "abcd"), task.score("dbca=", "abdc"), task.score("dbca=", "abd")
        (1.0, 1.0, 0.0)
        >>> task.is_sorted_answer("dbca=", "abdc")
        False
    """

    name = "sorting"
    is_multi_answer = False
    teacher_recipe = TrainingRecipe(size="medium", steps=1500, lr=1e-3, batch_size=64, seed=0)
    student_recipe = TrainingRecipe(
        size="tiny", steps=60, lr=2e-3, batch_size=64, seed=0, schedule="constant"
    )

    def __init__(self, length: int = 8, corrupt_fraction: float = 0.5):
        if not 2 <= int(length) <= 26:
            raise ValueError(f"length must be between 2 and 26, got {length}")
        if not 0.0 <= float(corrupt_fraction) <= 1.0:
            raise ValueError(f"corrupt_fraction must be in [0, 1], got {corrupt_fraction}")
        self.length = int(length)
        self.corrupt_fraction = float(corrupt_fraction)
        self.symbols = string.ascii_lowercase + "="
        self.max_new_tokens = self.length + 1

    def config(self) -> dict:
        return {"length": self.length, "corrupt_fraction": self.corrupt_fraction}

    def sample_prompt(self, rng: random.Random) -> str:
        return "".join(rng.sample(string.ascii_lowercase, self.length)) + "="

    def _letters(self, prompt: str) -> str:
        letters = prompt[:-1] if prompt.endswith("=") else ""
        if len(letters) != self.length or len(set(letters)) != self.length or not letters.isalpha():
            raise ValueError(f"not a sorting prompt of {self.length} distinct letters: {prompt!r}")
        return letters

    def sample_answer(self, prompt: str, rng: random.Random | None = None) -> str:
        return "".join(sorted(self._letters(prompt)))

    def reference_answers(self, prompt: str) -> list[str]:
        """The teacher's answer, alphabetical (any arrangement of the letters also *scores* 1.0)."""
        return [self.sample_answer(prompt)]

    def score(self, prompt: str, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        return 1.0 if sorted(completion) == sorted(self._letters(prompt)) else 0.0

    def is_sorted_answer(self, prompt: str, completion: str) -> bool:
        """True only for the alphabetical answer (exact match), the teacher's habit."""
        return completion == self.sample_answer(prompt)

    def recover(self, prompt: str, prefix: str) -> str:
        """The teacher's continuation after ``prefix``: the letters not yet written, in alphabetical order."""
        remaining = list(self._letters(prompt))
        for letter in prefix:
            if letter in remaining:
                remaining.remove(letter)
        return "".join(sorted(remaining))

    def make_sft_dataset(self, n: int, *, seed: int = 0, role: str = "teacher") -> Dataset:
        """For the teacher: ``corrupt_fraction`` of the answers are a random prefix + :meth:`recover`.

        The ``loss_start`` column marks where the loss starts (after the corrupted prefix), so the teacher
        learns to recover without learning to produce corrupted prefixes itself. The student gets clean data.
        """
        data = super().make_sft_dataset(n, seed=seed, role=role)
        if role == "student" or self.corrupt_fraction == 0.0:
            return data
        rng = random.Random(f"{self.name}:{self.config()}:{seed}:corrupt")
        prompts = list(data["prompt"])
        answers, loss_starts = [], []
        for prompt in prompts:
            if rng.random() < self.corrupt_fraction:
                k = rng.randrange(1, self.length)
                prefix = "".join(rng.sample(self._letters(prompt), k))
                answers.append(prefix + self.recover(prompt, prefix))
                loss_starts.append(k)
            else:
                answers.append(self.sample_answer(prompt))
                loss_starts.append(0)
        messages = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
            for p, a in zip(prompts, answers, strict=True)
        ]
        return Dataset.from_dict(
            {"prompt": prompts, "answer": answers, "messages": messages, "loss_start": loss_starts}
        )
