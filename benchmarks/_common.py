"""Shared plumbing of the benchmarks: workers in fresh processes, memory and time, statistics, tables, JSON.

Memory method (CPU): every measurement runs in a **fresh child process** that builds its inputs,
then resets the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``, Linux
≥ 4.0) and reads ``VmHWM`` from ``/proc/self/status`` after the work: *peak memory above the
inputs* = VmHWM − RSS just before the work. It counts every page the process touched (PyTorch
tensors, allocator slack, Python objects), i.e. what a user of the machine sees. Where the reset is
not available the fallback is ``resource.getrusage().ru_maxrss`` (a lifetime peak, measured after
the inputs are built, so it can only over-estimate). Freed large tensors go back to the OS (glibc
returns mmapped blocks, i.e. blocks over its mmap threshold, which grows up to 32 MB), so successive
repeats in one process measure the large tensors independently; smaller freed blocks can stay in the
heap and be reused unseen by a later repeat. Where that matters (``bench_teacher_memory``) the worker
runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that every block ≥ 64 kB is a fresh mapping.

Time: ``time.perf_counter`` around the work, ``torch.set_num_threads(threads)``; a tiny warm-up runs
first. Statistics are min / median / max over repeats; a ratio's statistics are over the ratios of
runs paired by repeat index (odistill run i / peer run i, measured back to back).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TRL_MISSING = "TRL not installed: peer columns skipped"
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ----------------------------------------------------------------------------------------------
# environment
# ----------------------------------------------------------------------------------------------


def have_trl() -> bool:
    return importlib.util.find_spec("trl") is not None


def trl_version() -> str | None:
    if not have_trl():
        return None
    from importlib.metadata import version

    return version("trl")


def machine() -> dict:
    """What the numbers were measured on (load average included: other processes share the CPU)."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "trl": trl_version(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        from importlib.metadata import version

        info["transformers"] = version("transformers")
    except Exception:  # pragma: no cover
        pass
    return info


def setup_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        import psutil

        return psutil.Process().memory_info().rss


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS; False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes() -> int:
    """RSS high-water mark (since the last :func:`reset_peak`, else since the process started)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """``with PeakMemory() as m: work()`` → ``m.above`` = peak RSS during the block − RSS at its start."""

    def __enter__(self):
        import gc

        gc.collect()
        self.reset = reset_peak()
        self.base = rss_bytes()
        return self

    def __exit__(self, *exc):
        self.peak = peak_bytes()
        self.above = max(0, self.peak - self.base)
        return False


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


# ----------------------------------------------------------------------------------------------
# workers: the parent runs `python <script> --worker '<json>'` and reads one JSON line back
# ----------------------------------------------------------------------------------------------


WORKER_TAG = "@@RESULT@@ "


def emit(result: dict) -> None:
    print(WORKER_TAG + json.dumps(result), flush=True)


def run_worker(script: str | Path, job: dict, timeout: float = 1800, env: dict | None = None) -> dict:
    """Run one job in a fresh interpreter; return its result dict (or {'error': ...})."""
    env = {**os.environ, **(env or {})}
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    cmd = [sys.executable, str(script), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(WORKER_TAG):
            return json.loads(line[len(WORKER_TAG) :])
    tail = (proc.stderr or proc.stdout)[-2000:]
    return {"error": f"worker failed (exit {proc.returncode}): {tail}"}


# ----------------------------------------------------------------------------------------------
# statistics and tables
# ----------------------------------------------------------------------------------------------


def stats(values) -> dict | None:
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def paired_ratios(numerators, denominators) -> dict | None:
    """Statistics of numerator[i] / denominator[i] over repeats measured back to back."""
    pairs = [(a, b) for a, b in zip(numerators, denominators, strict=False) if a is not None and b]
    return stats(a / b for a, b in pairs)


def fmt_stats(s: dict | None, digits: int = 3, unit: str = "") -> str:
    if not s:
        return "–"
    med = f"{s['median']:.{digits}g}"
    if s["n"] == 1:
        return f"{med}{unit}"
    return f"{med}{unit} ({s['min']:.{digits}g}–{s['max']:.{digits}g})"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path | None, payload: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))
    print(f"wrote {path}")


def job_runner(args, script, worker):
    """How to run a job: in a fresh process (memory is per process), or in this one for ``--quick``
    (smoke runs: seconds, one interpreter start) unless ``--spawn`` asks for the real thing."""
    if args.quick and not args.spawn:
        return lambda job, env=None: worker(job)
    return lambda job, env=None: run_worker(script, job, env=env)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds): a smoke run")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--no-peer", action="store_true", help="skip TRL even when it is installed")
    parser.add_argument(
        "--spawn", action="store_true", help="with --quick: still run each job in a fresh process"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser
