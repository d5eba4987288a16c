"""Where training runs: the accelerator (devices, processes, mixed precision) and the CPU thread policy.

The thread policy is the one place odistill sets torch's CPU threads (the CLI, the lab-bench
experiments and checkpoint training all use :func:`cpu_threads`): an explicit number wins; otherwise
``OMP_NUM_THREADS`` is respected when set; otherwise at most 2 threads — the lab bench's matrices are
so small that more threads mostly wait on each other, and on a shared machine they wait on other
processes too. Denormal floats are flushed while it is active (they can slow CPU math by an order of
magnitude).
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["cpu_threads", "make_accelerator"]

#: The most threads :func:`cpu_threads` picks by itself.
DEFAULT_MAX_THREADS = 2


@contextlib.contextmanager
def cpu_threads(threads: int | None = None):
    """Run the block with ``threads`` torch CPU threads (default: see the module docstring), then restore."""
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(min(DEFAULT_MAX_THREADS, before))
    torch.set_flush_denormal(True)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)


def make_accelerator(device: str = "auto", mixed_precision: str = "no"):
    """An ``accelerate.Accelerator`` for ``device`` ("auto": CUDA when available) and mixed precision.

    accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision
    ("AcceleratorState has already been initialized"); in a single process (a notebook running one
    ``distill()`` in bf16, then one in float32) the precision part of that state is reset first. Under
    ``torchrun`` it is left alone: every process of a job uses one precision.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = AcceleratorState._shared_state
    if (
        state
        and state.get("_mixed_precision", mixed_precision) != mixed_precision
        and "RANK" not in os.environ
    ):
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)
