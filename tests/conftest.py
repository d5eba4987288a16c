"""Shared fixtures: a character tokenizer and tiny random causal LMs (no download, built in milliseconds)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from odistill.bench.tokenizer import build_char_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def addition_models():
    """(student, teacher, tokenizer): the lab bench's shipped addition checkpoints, loaded once."""
    from odistill import load_model

    teacher, tokenizer = load_model("addition-teacher")
    student, _ = load_model("addition-student")
    return student, teacher, tokenizer


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer("0123456789+=")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a launcher's rendezvous or a test server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(script, *args, timeout: float = 240):
    """Run ``script args…`` under ``torchrun --nproc_per_node 2`` on 127.0.0.1 (one CPU thread each) and
    return the finished process; fails the test with the output's tail if it did not exit cleanly."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def make_tiny_llama(
    vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 1, max_positions: int = 64
):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


@pytest.fixture()
def tiny_pair(char_tokenizer):
    """(student, teacher) with the same vocabulary, different random weights."""
    return make_tiny_llama(len(char_tokenizer), seed=0), make_tiny_llama(
        len(char_tokenizer), seed=1, hidden=48
    )
