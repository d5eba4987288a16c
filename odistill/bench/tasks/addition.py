"""Zero-padded multi-digit addition — the quick default task: one correct answer, checked by exact match."""

from __future__ import annotations

import random

from .base import Task, TrainingRecipe

__all__ = ["Addition"]


class Addition(Task):
    """Add two zero-padded numbers: ``"023+456="`` → ``"0479"`` (the answer has ``digits + 1`` digits).

    Zero padding keeps every prompt and answer the same length, which makes the task easy to learn
    (unpadded operands of different lengths are rare under uniform sampling and much harder to learn).
    With ``reverse=True`` the digits of both operands and of the answer are written least-significant
    first (1234 + 5678 = 06912 is written ``"4321+8765="`` → ``"21960"``), the order in which a
    left-to-right model can carry: a harder variant for bigger experiments.

    Score: 1.0 for the exact answer string, 0.0 for anything else (wrong digits, too short, trailing text).

    Shipped models: the teacher is 2 × 128 ("small"), trained for 1500 steps. Learning this task has a
    sharp phase transition (exact match jumps from near 0 to most answers within about a hundred steps,
    at a point that depends on schedule and batch order), so the warm-started student is the same size
    stopped *before* it, after 400 steps: always four digits, many of them right, but rarely the exact
    answer — well-formed and usually wrong; distillation has to carry it over the transition. Each
    checkpoint's ``odistill.json`` records its measured scores.

    Args:
        digits: digits per operand (1–9).
        reverse: write every number least-significant digit first.

    Example:
        >>> task = Addition()
        >>> task.score("023+456=", "0479"), task.score("023+456=", "479"), task.score("023+456=", "0479 ")
        (1.0, 0.0, 0.0)
    """

    name = "addition"
    is_multi_answer = False
    teacher_recipe = TrainingRecipe(size="small", steps=1500, lr=2e-3, batch_size=64, seed=0)
    student_recipe = TrainingRecipe(
        size="small", steps=400, lr=2e-3, batch_size=64, seed=0, schedule="constant"
    )

    def __init__(self, digits: int = 3, reverse: bool = False):
        if not 1 <= int(digits) <= 9:
            raise ValueError(f"digits must be between 1 and 9, got {digits}")
        self.digits = int(digits)
        self.reverse = bool(reverse)
        self.symbols = "0123456789+="
        self.max_new_tokens = self.digits + 2  # digits + 1 answer digits, then EOS

    def config(self) -> dict:
        return {"digits": self.digits, "reverse": self.reverse}

    def _fmt(self, value: int, width: int) -> str:
        text = f"{value:0{width}d}"
        return text[::-1] if self.reverse else text

    def sample_prompt(self, rng: random.Random) -> str:
        a, b = rng.randrange(10**self.digits), rng.randrange(10**self.digits)
        return f"{self._fmt(a, self.digits)}+{self._fmt(b, self.digits)}="

    def _operands(self, prompt: str) -> tuple[int, int]:
        body = prompt[:-1] if prompt.endswith("=") else ""
        parts = body.split("+")
        if len(parts) != 2 or not all(len(p) == self.digits and p.isdigit() for p in parts):
            raise ValueError(f"not an addition prompt with {self.digits}-digit operands: {prompt!r}")
        if self.reverse:
            parts = [p[::-1] for p in parts]
        return int(parts[0]), int(parts[1])

    def sample_answer(self, prompt: str, rng: random.Random | None = None) -> str:
        a, b = self._operands(prompt)
        return self._fmt(a + b, self.digits + 1)

    def score(self, prompt: str, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        return 1.0 if completion == self.sample_answer(prompt) else 0.0
