"""Loggers: where the per-step history rows of :func:`odistill.distill` go, besides ``DistillResult.history``.

A logger has three methods: ``start(config, first_step)`` before the first step, ``log(row)`` for each
history row (a training step, or an evaluation-only row at step 0), and ``close()`` at the end, also
after an error. The registered loggers run on the main process only (a ``distill(callback=...)`` runs
on every process). Registered loggers (``DistillConfig.report_to``):

==========  ==================================================================================
progress    a tqdm bar over the steps with the loss and reverse KL (``DistillConfig.progress``)
jsonl       one JSON object per row in ``output_dir/metrics.jsonl`` (a resumed run continues it)
==========  ==================================================================================

A new logger is a class with those three methods, registered in :data:`LOGGERS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = ["Logger", "LOGGERS", "ProgressLogger", "JsonlLogger", "CallbackLogger", "make_loggers"]


class Logger(Protocol):
    def start(self, config, first_step: int) -> None: ...

    def log(self, row: dict) -> None: ...

    def close(self) -> None: ...


class ProgressLogger:
    """A tqdm bar over the optimizer steps; the loss and per-token reverse KL every ``log_every`` steps."""

    def __init__(self, threads: int | None = None):
        self.bar, self.threads = None, threads

    def start(self, config, first_step: int) -> None:
        from tqdm.auto import tqdm

        self.config = config
        desc = config.describe()
        if self.threads is not None:  # on CPU: say what the thread policy chose
            desc += f" · {self.threads} CPU thread{'s' if self.threads > 1 else ''}"
        self.bar = tqdm(desc=desc, initial=first_step - 1, total=config.steps)

    def log(self, row: dict) -> None:
        if "loss" not in row:  # an evaluation-only row (step 0)
            return
        self.bar.update(1)
        if row["step"] % self.config.log_every == 0 or row["step"] == self.config.steps:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", rkl=f"{row['reverse_kl']:.3f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class JsonlLogger:
    """Append each history row as one JSON line to ``output_dir/metrics.jsonl`` (NaN written as null)."""

    FILE = "metrics.jsonl"

    def start(self, config, first_step: int) -> None:
        """Open the file; a resumed run (``first_step > 1``) keeps only the rows before ``first_step``, so
        the rows written after the checkpoint it resumes from are not there twice."""
        self.path = Path(config.output_dir) / self.FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if first_step > 1 and self.path.is_file():
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] < first_step
            ]
        self.file = self.path.open("w")
        self.file.write("".join(line + "\n" for line in kept))
        self.file.flush()

    def log(self, row: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(clean, default=str) + "\n")
        self.file.flush()

    def close(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()


class CallbackLogger:
    """Call ``callback(row)`` for every history row (``distill(callback=...)``, e.g. a live plot)."""

    def __init__(self, callback: Callable[[dict], None]):
        self.callback = callback

    def start(self, config, first_step: int) -> None:
        pass

    def log(self, row: dict) -> None:
        self.callback(row)

    def close(self) -> None:
        pass


#: Registered loggers, by the name ``DistillConfig.report_to`` uses.
LOGGERS: dict[str, Callable[[], Logger]] = {"progress": ProgressLogger, "jsonl": JsonlLogger}


def make_loggers(
    config, callback: Callable[[dict], None] | None, main_process: bool, *, threads: int | None = None
) -> list[Logger]:
    """The loggers of a run: the progress bar (if ``config.progress``; its description names ``threads``,
    the CPU threads of the loop), ``config.report_to``, the callback."""
    names = [*(["progress"] if config.progress else []), *(n for n in config.report_to if n != "progress")]
    loggers: list[Logger] = []
    for name in names if main_process else []:
        loggers.append(ProgressLogger(threads) if LOGGERS[name] is ProgressLogger else LOGGERS[name]())
    if callback is not None:
        loggers.append(CallbackLogger(callback))
    return loggers
