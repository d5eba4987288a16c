"""Fixtures of the server tests: the shipped addition teacher and student."""

from __future__ import annotations

import pytest

from odistill import load_model


@pytest.fixture(scope="module")
def models():
    teacher, tokenizer = load_model("addition-teacher")
    student, _ = load_model("addition-student")
    return student, teacher, tokenizer
