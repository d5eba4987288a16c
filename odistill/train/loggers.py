"""Loggers: where the per-step history rows of :func:`odistill.distill` go, besides ``DistillResult.history``.

A logger has three methods: ``start(config, first_step)`` before the first step, ``log(row)`` for each
history row (a training step, or an evaluation-only row at step 0), and ``close()`` at the end, also
after an error. The registered loggers run on the main process only (a ``distill(callback=...)`` runs
on every process). Registered loggers (``DistillConfig.report_to``):

===========  =================================================================================
progress     a tqdm bar over the steps with the loss and reverse KL (``DistillConfig.progress``)
jsonl        one JSON object per row in ``output_dir/metrics.jsonl`` (a resumed run continues it)
tensorboard  TensorBoard event files in ``output_dir/tensorboard`` (the ``tensorboard`` package)
wandb        a Weights & Biases run (``wandb``; ``WANDB_MODE=offline`` where there is no network)
trackio      a Trackio run (``trackio``, local by default)
===========  =================================================================================

The last three go through accelerate's trackers (:mod:`accelerate.tracking`): the config is stored once
(``store_init_configuration``), every numeric value of a row is logged at its step, and a row's
``samples`` (every ``log_samples_every`` steps: prompts, completions and their per-token reverse KL) become
a table — a text table in TensorBoard, a ``log_table`` where the tracker has one.

A new logger is a class with those three methods, registered in :data:`LOGGERS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

__all__ = [
    "Logger",
    "LOGGERS",
    "ProgressLogger",
    "JsonlLogger",
    "TrackerLogger",
    "CallbackLogger",
    "make_loggers",
    "samples_markdown",
]


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


def samples_markdown(samples: list[dict]) -> str:
    """A markdown table of sample completions (``row["samples"]``) with their mean per-token reverse KL."""
    lines = ["| prompt | completion | reverse KL / token |", "|---|---|---|"]
    for s in samples:
        cells = [str(s["prompt"]).replace("|", "\\|"), str(s["completion"]).replace("|", "\\|")]
        lines.append(f"| {cells[0]} | {cells[1]} | {s['reverse_kl']:.4f} |")
    return "\n".join(lines)


class TrackerLogger:
    """Log the rows through one of accelerate's trackers (``tensorboard``, ``wandb``, ``trackio``)."""

    #: report_to name → (accelerate tracker class name, the package it needs)
    KINDS = {
        "tensorboard": ("TensorBoardTracker", "tensorboard"),
        "wandb": ("WandBTracker", "wandb"),
        "trackio": ("TrackioTracker", "trackio"),
    }

    def __init__(self, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {sorted(self.KINDS)}, got {kind!r}")
        self.kind, self.tracker = kind, None

    def start(self, config, first_step: int) -> None:
        import importlib.util

        import accelerate.tracking

        cls_name, package = self.KINDS[self.kind]
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"report_to={self.kind!r} needs the {package} package: pip install {package}")
        cls = getattr(accelerate.tracking, cls_name)
        run_name = Path(config.output_dir).name if config.output_dir else "odistill"
        if self.kind == "tensorboard":
            self.tracker = cls(run_name, Path(config.output_dir) / "tensorboard")
        elif self.kind == "wandb":
            self.tracker = cls(run_name, dir=config.output_dir, resume="allow" if first_step > 1 else None)
        else:
            self.tracker = cls(run_name)
        start = getattr(self.tracker, "start", None)  # accelerate >= 1.x opens the run here
        if callable(start):
            start()
        if first_step == 1:
            self.tracker.store_init_configuration(hparams(config.to_dict()))

    def log(self, row: dict) -> None:
        step = row["step"]
        values = {
            k: float(v)
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
        }
        if values:
            self.tracker.log(values, step=step)
        samples = row.get("samples")
        if samples:
            table = getattr(self.tracker, "log_table", None)
            if callable(table) and self.kind != "tensorboard":
                columns = ["prompt", "completion", "reverse_kl"]
                table("samples", columns=columns, data=[[s[c] for c in columns] for s in samples], step=step)
            else:
                self.tracker.log({"samples": samples_markdown(samples)}, step=step)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.finish()


def hparams(config: dict) -> dict:
    """A config as trackers' hyper-parameter tables take it: numbers, strings and booleans only."""
    out = {}
    for key, value in config.items():
        out[key] = value if isinstance(value, bool | int | float | str) else json.dumps(value)
    return out


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
LOGGERS: dict[str, Callable[[], Logger]] = {
    "progress": ProgressLogger,
    "jsonl": JsonlLogger,
    **{kind: (lambda kind=kind: TrackerLogger(kind)) for kind in TrackerLogger.KINDS},
}


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
