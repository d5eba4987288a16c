"""Where training runs: the accelerator (devices, processes, mixed precision) and the CPU thread policy.

The thread policy is the one place odistill sets torch's CPU threads (``distill()``, the CLI, the
lab-bench experiments and checkpoint training all use :func:`cpu_threads` / :func:`choose_threads`),
in this order:

1. an explicit number (``DistillConfig.threads``, ``--threads``) wins;
2. otherwise ``OMP_NUM_THREADS``, when set, is respected (torch read it at start-up);
3. otherwise models of at most :data:`SMALL_MODEL_PARAMETERS` parameters (every lab-bench model) run on
   **one** thread: their matrices are so small that more threads mostly wait on each other, and on a
   shared machine on other processes too (``docs/performance.md`` has the measurement);
4. otherwise torch's own default (one thread per core).

Denormal floats are flushed while it is active (they can slow CPU math by an order of magnitude). The
choice is reported: ``DistillResult.threads``, the progress bar's description, the CLI's JSON.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["SMALL_MODEL_PARAMETERS", "check_launch", "choose_threads", "cpu_threads", "make_accelerator"]

#: Models (student and teacher together) up to this many parameters run on one CPU thread by default.
SMALL_MODEL_PARAMETERS = 20_000_000


def choose_threads(threads: int | None = None, *, parameters: int | None = None) -> int | None:
    """The thread count the policy picks (see the module docstring); None: leave torch's as it is."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
        return threads
    if "OMP_NUM_THREADS" in os.environ:
        return None
    if parameters is not None and parameters <= SMALL_MODEL_PARAMETERS:
        return 1
    return None


@contextlib.contextmanager
def cpu_threads(threads: int | None = None, *, parameters: int | None = None):
    """Run the block with the policy's CPU thread count (an explicit ``threads`` wins; ``parameters``:
    the size of the models, for rule 3), then restore torch's. Yields the number of threads in use."""
    before = torch.get_num_threads()
    chosen = choose_threads(threads, parameters=parameters)
    if chosen:
        torch.set_num_threads(chosen)
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


def check_launch(accelerator) -> None:
    """Refuse a launch whose processes do not form one job.

    ``accelerate launch`` with a GPU config (``use_cpu: false``) on a machine without a GPU starts N
    processes that each train alone, from the same seed, on the same prompts: N copies of one run.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"this process was launched as one of {world} (WORLD_SIZE={world}), but it trains alone: "
            "accelerate found no GPU for its config. On a CPU machine set use_cpu: true in the accelerate "
            "config (or pass --cpu to accelerate launch); on a GPU machine check that torch sees the GPUs"
        )
