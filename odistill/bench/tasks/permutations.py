"""Permutations — many valid answers per prompt, so the teacher's answer distribution is multimodal."""

from __future__ import annotations

import itertools
import random
import string

from .base import Task, TrainingRecipe

__all__ = ["Permutations"]


class Permutations(Task):
    """Write the prompt's letters in any order: ``"qxbfa="`` → ``"fabxq"``, ``"abfqx"``, … (5! = 120 answers).

    The training answers are uniformly random orderings, so a well-trained teacher spreads its
    probability over all 120 of them: a *multimodal* teacher. A student too small to copy it must choose:
    forward KL (mode covering) keeps it diverse but lets invalid strings in; reverse KL (mode seeking)
    makes it collapse onto fewer, valid orderings. :func:`odistill.bench.evaluation.evaluate` measures both
    (``sampled_validity`` and ``distinct_valid``).

    Score: 1.0 when the completion uses each letter of the prompt exactly once and nothing else.

    Args:
        length: letters per prompt (distinct, from ``a``–``z``).

    Example:
        >>> task = Permutations()
        >>> task.score("qxbfa=", "abfqx"), task.score("qxbfa=", "abfqq"), task.score("qxbfa=", "abfq")
        (1.0, 0.0, 0.0)
    """

    name = "permutations"
    is_multi_answer = True
    teacher_recipe = TrainingRecipe(size="small", steps=1500, lr=2e-3, batch_size=64, seed=0)
    student_recipe = TrainingRecipe(size="tiny", steps=300, lr=2e-3, batch_size=64, seed=0)

    def __init__(self, length: int = 5):
        if not 2 <= int(length) <= 10:
            raise ValueError(f"length must be between 2 and 10, got {length}")
        self.length = int(length)
        self.symbols = string.ascii_lowercase + "="
        self.max_new_tokens = self.length + 1

    def config(self) -> dict:
        return {"length": self.length}

    def sample_prompt(self, rng: random.Random) -> str:
        return "".join(rng.sample(string.ascii_lowercase, self.length)) + "="

    def _letters(self, prompt: str) -> str:
        letters = prompt[:-1] if prompt.endswith("=") else ""
        if len(letters) != self.length or len(set(letters)) != self.length or not letters.isalpha():
            raise ValueError(f"not a permutations prompt of {self.length} distinct letters: {prompt!r}")
        return letters

    def sample_answer(self, prompt: str, rng: random.Random) -> str:
        return "".join(rng.sample(self._letters(prompt), self.length))

    def reference_answers(self, prompt: str) -> list[str]:
        return ["".join(p) for p in itertools.permutations(sorted(self._letters(prompt)))]

    def score(self, prompt: str, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        return 1.0 if sorted(completion) == sorted(self._letters(prompt)) else 0.0
