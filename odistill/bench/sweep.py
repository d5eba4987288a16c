"""Experiments on the lab bench: a grid of configs × seeds, learning curves, targets, intervals.

One *run* distils a task's shipped teacher into its shipped student with one point of the grid (a dict
of :class:`~odistill.train.config.DistillConfig` overrides) and one seed, and records the greedy accuracy
on held-out prompts every ``eval_every`` steps against optimizer steps **and** training seconds (the
loop's own step timer, evaluation excluded). A sweep runs every (point, seed), in parallel processes of
one CPU thread each when ``workers > 1``; each run is deterministic in its seed, so the accuracies do not
depend on the number of workers (the seconds do, with the machine's load)::

    from odistill.bench.sweep import run_sweep

    sweep = run_sweep("sorting", grid={"beta": [0, 1], "lmbda": [0, 1]}, seeds=3, steps=150,
                      eval_every=15, target=0.9, workers=2)
    sweep.summary()          # per point: final accuracy, steps and seconds to the target, mean ± 95 % CI
    sweep.to_csv("runs.csv")  # one tidy row per (point, seed, evaluation)
    sweep.plot(x="seconds")

The same from a shell: ``odistill sweep --task sorting --grid beta=0,1 --grid lmbda=0,1 --seeds 3``.
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..train.config import ConfigError, DistillConfig

__all__ = [
    "run_sweep",
    "train_head_start",
    "SweepResult",
    "grid_points",
    "mean_ci",
    "t_quantile",
    "first_reaching",
    "point_label",
]


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def _t_cdf_upper_half(x: float, df: int, intervals: int = 4000) -> float:
    """P(0 ≤ T ≤ x) for Student's t with ``df`` degrees of freedom (Simpson's rule on its density)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    h = x / intervals
    total = density(0.0) + density(x)
    total += 4 * sum(density((2 * i - 1) * h) for i in range(1, intervals // 2 + 1))
    total += 2 * sum(density(2 * i * h) for i in range(1, intervals // 2))
    return total * h / 3


@functools.lru_cache(maxsize=256)
def t_quantile(level: float, df: int) -> float:
    """The two-sided critical value of Student's t: ``P(|T| ≤ q) = level`` (e.g. 4.303 for 95 %, df = 2).

    Computed by bisection on the t distribution's CDF (no SciPy needed); accurate to ~1e-6.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not (isinstance(df, int) and df >= 1):
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    half = level / 2
    lo, hi = 0.0, 1.0
    while _t_cdf_upper_half(hi, df) < half:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf_upper_half(mid, df) < half else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict:
    """Mean and a ``level`` confidence interval of the mean (Student's t over the values' spread).

    Returns ``{"mean", "low", "high", "n"}``; with fewer than two values the interval is undefined
    (``low`` and ``high`` are None), with no values everything is None.
    """
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(level, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def first_reaching(curve: list[dict], target: float, key: str = "accuracy") -> dict | None:
    """The first evaluation of ``curve`` (rows with ``step``, ``seconds`` and ``key``) at or above
    ``target``, or None if the run never reached it."""
    for row in curve:
        if row[key] is not None and row[key] >= target:
            return row
    return None


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------


def grid_points(grid: Mapping[str, Iterable]) -> list[dict]:
    """Every combination of the grid's values, the first name varying slowest:
    ``{"beta": [0, 1], "lmbda": [0, 1]}`` → ``[{beta 0, lmbda 0}, {0, 1}, {1, 0}, {1, 1}]``."""
    names = list(grid)
    values = [list(grid[name]) for name in names]
    for name, vals in zip(names, values, strict=True):
        if not vals:
            raise ValueError(f"the grid's {name!r} has no values")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def point_label(point: Mapping) -> str:
    """A short label of a grid point: ``"beta=0, lmbda=0.25"`` (``"base"`` for no overrides)."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()) or "base"


def _check_points(points: list[dict], base: DistillConfig) -> None:
    """Fail before any run starts if a point names an unknown field or makes an invalid config."""
    known = {f.name for f in fields(DistillConfig)}
    for point in points:
        unknown = sorted(set(point) - known)
        if unknown:
            raise ConfigError(f"unknown DistillConfig fields {unknown} in the sweep point {dict(point)}")
        try:
            replace(base, **point)
        except ConfigError as error:
            raise ConfigError(
                f"the sweep point {point_label(point)} is not a valid config: {error}"
            ) from error


# ----------------------------------------------------------------------------------------------
# one run (a worker process, or this one)
# ----------------------------------------------------------------------------------------------


def _distill_on_task(
    task,
    config: DistillConfig,
    *,
    student=None,
    teacher=None,
    threads=1,
    eval_n=None,
    samples_per_prompt=None,
):
    """Distil ``task``'s teacher (default: the shipped one) into its student on the task's dataset (seeded
    by ``config.seed``), on ``threads`` CPU threads, evaluated every ``config.eval_every`` steps on
    ``eval_n`` held-out prompts when given. Returns (the :class:`DistillResult`, the tokenizer, threads)."""
    from ..train.runtime import cpu_threads
    from ..train.trainer import distill
    from .experiments import make_eval_fn
    from .models import count_parameters, load_model

    student, tokenizer = load_model(student or f"{task.name}-student")
    teacher, _ = load_model(teacher or f"{task.name}-teacher")
    eval_fn = None
    if eval_n is not None:
        eval_fn = make_eval_fn(task, tokenizer, n=eval_n, samples_per_prompt=samples_per_prompt)
    size = count_parameters(student) + count_parameters(teacher)
    with cpu_threads(threads, parameters=size) as used:
        result = distill(
            student,
            teacher,
            tokenizer,
            task.make_dataset(4000, seed=config.seed),
            replace(config, threads=used, progress=False),
            eval_fn=eval_fn,
        )
    return result, tokenizer, used


def _run_one(job: dict) -> dict:
    """Distil ``job["task"]``'s shipped teacher into its student with ``job["config"]``; the curve."""
    from .tasks import get_task

    config = DistillConfig.from_dict(job["config"])
    result, _, threads = _distill_on_task(
        get_task(job["task"]),
        config,
        student=job["student"],
        teacher=job["teacher"],
        threads=job["threads"],
        eval_n=job["eval_n"],
        samples_per_prompt=job.get("samples_per_prompt"),
    )
    seconds, curve = 0.0, []
    for row in result.history:
        seconds += row.get("seconds", 0.0)
        if "eval/accuracy" in row:
            metrics = {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}
            curve.append({"step": row["step"], "seconds": seconds, **metrics})
    train_rows = [row for row in result.history if "seconds" in row]
    return {
        "point": job["point"],
        "seed": config.seed,
        "curve": curve,
        "final_accuracy": curve[-1]["accuracy"] if curve else None,
        "seconds": seconds,
        "seconds_per_step": seconds / max(len(train_rows), 1),
        "threads": threads,
        "method": config.describe(),
    }


def train_head_start(
    task: str,
    folder: str | Path,
    *,
    base: DistillConfig | str = "tiny-cpu",
    seed: int = 0,
    threads: int | None = 1,
    **overrides,
) -> Path:
    """Train a copy of ``task``'s shipped student with ``base`` + ``overrides`` (e.g. ``steps=150, lmbda=0,
    beta=1``) and save it, with its tokenizer, to ``folder``: a student to start a sweep from
    (``run_sweep(..., student=folder)``). No evaluation. Deterministic in ``seed`` at one CPU thread, so
    the same call gives the same weights again (a notebook can re-create a committed sweep's student).
    Returns ``folder``."""
    from .tasks import get_task

    task_obj = get_task(task)
    config = DistillConfig.preset(base) if isinstance(base, str) else base
    config = replace(config, eval_every=0, seed=seed, **overrides)
    if config.max_new_tokens == DistillConfig.max_new_tokens:
        config = replace(config, max_new_tokens=task_obj.max_new_tokens)
    result, tokenizer, _ = _distill_on_task(task_obj, config, threads=threads)
    folder = Path(folder)
    result.student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# the result
# ----------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The runs of a sweep (one dict per (point, seed), see :func:`run_sweep`) and how they were made."""

    task: str
    points: list[dict]
    seeds: list[int]
    runs: list[dict]
    target: float | None = None
    settings: dict = field(default_factory=dict)

    def runs_of(self, point: Mapping) -> list[dict]:
        """The runs of one grid point, in seed order."""
        return [run for run in self.runs if run["point"] == dict(point)]

    def rows(self) -> list[dict]:
        """The tidy table: one row per (point, seed, evaluation) with the point's fields as columns."""
        out = []
        for run in self.runs:
            for row in run["curve"]:
                out.append({**run["point"], "seed": run["seed"], **row})
        return out

    def summary(
        self, target: float | None = None, level: float = 0.95, metric: str = "accuracy"
    ) -> list[dict]:
        """Per point: the final value of ``metric`` (``final_accuracy`` for the default, ``final`` in any
        case) and, with a ``target`` (default: the sweep's), the steps and seconds to reach it — each as mean
        with its ``level`` interval over seeds. Runs that never reach the target are counted in ``reached``
        (``"2/3"``) and left out of the steps/seconds means."""
        target = self.target if target is None else target
        out = []
        for point in self.points:
            runs = self.runs_of(point)
            final = mean_ci([r["curve"][-1][metric] if r["curve"] else None for r in runs], level)
            entry = {
                "point": point_label(point),
                **point,
                "seeds": len(runs),
                "final": final,
                "final_accuracy": mean_ci([r["final_accuracy"] for r in runs], level),
                "seconds_per_step": mean_ci([r["seconds_per_step"] for r in runs], level),
            }
            if target is not None:
                hits = [first_reaching(r["curve"], target, metric) for r in runs]
                reached = [h for h in hits if h is not None]
                entry.update(
                    target=target,
                    reached=f"{len(reached)}/{len(runs)}",
                    steps_to_target=mean_ci([h["step"] for h in reached], level),
                    seconds_to_target=mean_ci([h["seconds"] for h in reached], level),
                )
            out.append(entry)
        return out

    def curve(self, point: Mapping, x: str = "step", level: float = 0.95, metric: str = "accuracy") -> dict:
        """The point's mean learning curve with its interval: ``{"x", "mean", "low", "high"}`` lists, one
        entry per evaluation step shared by all its seeds (``x="seconds"``: the seeds' mean seconds there)."""
        if x not in ("step", "seconds"):
            raise ValueError(f"x must be 'step' or 'seconds', got {x!r}")
        runs = self.runs_of(point)
        if not runs:
            raise KeyError(f"no runs for the point {dict(point)}")
        steps = sorted(set.intersection(*({row["step"] for row in r["curve"]} for r in runs)))
        out = {"x": [], "mean": [], "low": [], "high": []}
        for step in steps:
            rows = [next(row for row in r["curve"] if row["step"] == step) for r in runs]
            stats = mean_ci([row[metric] for row in rows], level)
            out["x"].append(step if x == "step" else sum(row["seconds"] for row in rows) / len(rows))
            out["mean"].append(stats["mean"])
            out["low"].append(stats["low"] if stats["low"] is not None else stats["mean"])
            out["high"].append(stats["high"] if stats["high"] is not None else stats["mean"])
        return out

    def plot(
        self,
        ax=None,
        x: str = "step",
        points: list[dict] | None = None,
        level: float = 0.95,
        metric: str = "accuracy",
    ):
        """Mean curves of ``metric`` with shaded ``level`` intervals, one per point, against steps or
        seconds."""
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6.5, 3.8))[1]
        for point in points or self.points:
            c = self.curve(point, x=x, level=level, metric=metric)
            (line,) = ax.plot(c["x"], c["mean"], marker=".", label=point_label(point))
            ax.fill_between(c["x"], c["low"], c["high"], color=line.get_color(), alpha=0.15, lw=0)
        if self.target is not None:
            ax.axhline(self.target, color="0.5", lw=0.8, ls="--")
        ax.set(
            xlabel="optimizer steps" if x == "step" else "training seconds",
            ylabel="greedy accuracy (held out)" if metric == "accuracy" else f"{metric} (held out)",
            title=f"{self.task}: mean of {len(self.seeds)} seeds, {level:.0%} interval",
        )
        ax.legend(frameon=False, fontsize="small")
        return ax

    def table(self, target: float | None = None) -> str:
        """The summary as a markdown table."""

        def ci(s):
            if s["mean"] is None:
                return "–"
            if s["low"] is None:
                return f"{s['mean']:.3g}"
            return f"{s['mean']:.3g} ({s['low']:.3g} – {s['high']:.3g})"

        rows = self.summary(target)
        header = ["point", "seeds", "final accuracy (95 % CI)", "s/step"]
        if rows and "target" in rows[0]:
            header += [f"reached {rows[0]['target']:g}", "steps to target", "seconds to target"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            cells = [r["point"], str(r["seeds"]), ci(r["final_accuracy"]), ci(r["seconds_per_step"])]
            if "target" in r:
                cells += [r["reached"], ci(r["steps_to_target"]), ci(r["seconds_to_target"])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_json(self, path: str | Path) -> Path:
        """Write everything (settings, points, seeds, runs with their curves) as JSON."""
        path = Path(path)
        payload = {
            "task": self.task,
            "points": self.points,
            "seeds": self.seeds,
            "target": self.target,
            "settings": self.settings,
            "runs": self.runs,
        }
        path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> SweepResult:
        """Read a sweep written by :meth:`to_json`."""
        data = json.loads(Path(path).read_text())
        return cls(
            task=data["task"],
            points=data["points"],
            seeds=data["seeds"],
            runs=data["runs"],
            target=data.get("target"),
            settings=data.get("settings", {}),
        )

    def to_csv(self, path: str | Path) -> Path:
        """Write the tidy table (:meth:`rows`) as CSV."""
        path = Path(path)
        rows = self.rows()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return path


# ----------------------------------------------------------------------------------------------
# the sweep
# ----------------------------------------------------------------------------------------------


def run_sweep(
    task: str,
    *,
    grid: Mapping[str, Iterable] | None = None,
    points: list[dict] | None = None,
    base: DistillConfig | str = "tiny-cpu",
    seeds: int | Iterable[int] = 3,
    eval_n: int = 200,
    samples_per_prompt: int | None = None,
    target: float | None = None,
    workers: int = 1,
    threads: int | None = 1,
    student: str | None = None,
    teacher: str | None = None,
    progress: bool = False,
    **overrides,
) -> SweepResult:
    """Run every (point, seed) of a sweep on a lab-bench task and collect the learning curves.

    Args:
        task: a lab-bench task (its shipped teacher and student are used unless ``teacher``/``student``).
        grid: DistillConfig field → values; every combination is a point (:func:`grid_points`).
        points: or an explicit list of points (dicts of overrides); give one of ``grid`` / ``points``.
        base: the config the points modify: a :class:`DistillConfig` or a preset name.
        seeds: a number of seeds (0, 1, …) or the seeds themselves; ``config.seed`` of each run.
        eval_n: held-out prompts per evaluation (greedy accuracy, the same prompts for every run).
        samples_per_prompt: also draw this many temperature-1 samples per prompt at each evaluation and
            record ``sampled_validity`` and ``distinct_valid`` (see :func:`~odistill.evaluate`).
        target: an accuracy: :meth:`SweepResult.summary` then reports steps and seconds to reach it.
        workers: parallel processes (each run in a fresh process of ``threads`` CPU threads); 1 runs them
            here, one after the other.
        threads: CPU threads per run (None: the policy of :mod:`odistill.train.runtime`).
        **overrides: applied to ``base`` first, e.g. ``steps=150, eval_every=15``.

    Returns:
        A :class:`SweepResult`; runs are ordered point-major, then by seed.
    """
    if (grid is None) == (points is None):
        raise ValueError("give exactly one of grid= (field -> values) or points= (a list of overrides)")
    base = DistillConfig.preset(base) if isinstance(base, str) else base
    base = replace(base, **overrides)
    if not base.eval_every:
        raise ConfigError("a sweep records learning curves: set eval_every (steps between evaluations) > 0")
    points = grid_points(grid) if grid is not None else [dict(p) for p in points]
    if not points:
        raise ValueError("the sweep has no points")
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("the sweep needs at least one seed")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    _check_points(points, base)
    from .tasks import get_task

    task_obj = get_task(task)
    if base.max_new_tokens == DistillConfig.max_new_tokens:
        base = replace(base, max_new_tokens=task_obj.max_new_tokens)
    jobs = [
        {
            "task": task_obj.name,
            "point": point,
            "config": replace(base, **point, seed=seed).to_dict(),
            "eval_n": eval_n,
            "samples_per_prompt": samples_per_prompt,
            "threads": threads,
            "student": student,
            "teacher": teacher,
        }
        for point in points
        for seed in seeds
    ]
    runs = _execute(jobs, workers, progress)
    settings = {
        "base": base.to_dict(),
        "eval_n": eval_n,
        "samples_per_prompt": samples_per_prompt,
        "workers": workers,
        "threads": threads,
    }
    return SweepResult(task_obj.name, points, seeds, runs, target=target, settings=settings)


def _execute(jobs: list[dict], workers: int, progress: bool) -> list[dict]:
    """Run the jobs here (``workers == 1``) or in a pool of fresh processes; results in job order."""

    def say(i, run):
        if progress:
            print(
                f"  [{i + 1}/{len(jobs)}] {point_label(run['point'])} seed {run['seed']}: "
                f"accuracy {run['curve'][0]['accuracy']:.3f} → {run['final_accuracy']:.3f}, "
                f"{run['seconds_per_step']:.3f} s/step",
                flush=True,
            )

    if workers == 1:
        runs = []
        for i, job in enumerate(jobs):
            runs.append(_run_one(job))
            say(i, runs[-1])
        return runs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        futures = [pool.submit(_run_one, job) for job in jobs]
        runs = []
        for i, future in enumerate(futures):
            runs.append(future.result())
            say(i, runs[-1])
    return runs
