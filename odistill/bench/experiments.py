"""Ready-made experiments on the lab bench: one distillation run, and the off- vs on-policy demo.

These are what ``odistill distill`` and ``odistill demo`` run; notebooks call them too.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..core.remote import RemoteTeacher
from ..train.config import DistillConfig
from ..train.runtime import cpu_threads
from ..train.trainer import distill
from .evaluation import evaluate
from .models import count_parameters, load_model
from .tasks import get_task

__all__ = ["make_eval_fn", "run_distillation", "run_demo", "DEMO_METHODS", "format_table"]


def make_eval_fn(task, tokenizer, *, n: int = 200, seed: int = 1234, samples_per_prompt: int | None = None):
    """An ``eval_fn`` for :func:`~odistill.distill`: greedy accuracy (and sampled validity) on held-out
    prompts."""
    task = get_task(task)

    def eval_fn(model) -> dict:
        result = evaluate(model, tokenizer, task, n=n, seed=seed, samples_per_prompt=samples_per_prompt)
        keep = ("accuracy", "sampled_validity", "distinct_valid")
        return {k: result[k] for k in keep if k in result}

    return eval_fn


def run_distillation(
    task: str = "addition",
    *,
    config: DistillConfig | None = None,
    student: str | None = None,
    teacher: str | None = None,
    eval_n: int = 200,
    final_eval_n: int = 500,
    samples_per_prompt: int = 4,
    threads: int | None = None,
    resume_from: str | Path | None = None,
    teacher_url: str | None = None,
    teacher_api_key: str | None = None,
) -> dict:
    """Distil the (shipped) teacher of ``task`` into the (shipped, warm-started) student and measure both.

    Args:
        task: a lab-bench task name.
        config: the distillation settings (``max_new_tokens`` defaults to the task's when left at 16).
        student, teacher: names or paths for :func:`~odistill.load_model` (default: ``<task>-student`` and
            ``<task>-teacher``).
        eval_n: held-out prompts per evaluation during training (``config.eval_every``).
        final_eval_n: held-out prompts for the before/after evaluation.
        samples_per_prompt: temperature-1 samples per prompt for ``sampled`` accuracy / validity.
        threads: torch CPU threads for the run (default: ``config.threads``, else the policy of
            :mod:`odistill.train.runtime`: one thread for lab-bench models).
        resume_from: continue an interrupted run from its checkpoint (see :func:`~odistill.distill`).
        teacher_url: score with the teacher served there (``odistill serve-teacher``) instead of a local
            one (:class:`~odistill.core.remote.RemoteTeacher`; ``teacher`` is then ignored and the
            teacher's accuracy is not measured: it is None).
        teacher_api_key: the server's API key, if it needs one.

    Returns:
        A JSON-ready dict: ``task, config, student_accuracy_before, student_accuracy_after,
        student_sampled_before, student_sampled_after, teacher_accuracy, teacher_sampled, steps, seconds,
        seconds_per_step, skipped_steps, threads`` (the CPU threads the policy chose, None on a GPU),
        ``clipped_ratio`` (the mean over steps of the fraction of completions cut at ``max_new_tokens``)
        and ``history`` (per-step rows).
    """
    task_obj, config = get_task(task), config or DistillConfig()
    student_model, tokenizer = load_model(student or f"{task_obj.name}-student")
    if teacher_url is not None:
        teacher_model = RemoteTeacher(teacher_url, tokenizer=tokenizer, api_key=teacher_api_key)
        size = count_parameters(student_model)
    else:
        teacher_model, _ = load_model(teacher or f"{task_obj.name}-teacher")
        size = count_parameters(student_model) + count_parameters(teacher_model)
    with cpu_threads(threads if threads is not None else config.threads, parameters=size) as chosen:
        # the loop keeps the same count (an explicit one, so its own policy does not choose again)
        config = replace(config, threads=chosen)
        return _run_distillation(
            task_obj,
            config,
            (student_model, tokenizer),
            teacher_model,
            eval_n,
            final_eval_n,
            samples_per_prompt,
            resume_from,
        )


def _run_distillation(
    task_obj, config, student, teacher_model, eval_n, final_eval_n, samples_per_prompt, resume_from
):
    if config.max_new_tokens == DistillConfig.max_new_tokens:
        config = replace(config, max_new_tokens=task_obj.max_new_tokens)
    student_model, tokenizer = student

    def measure(model):
        r = evaluate(
            model, tokenizer, task_obj, n=final_eval_n, seed=4321, samples_per_prompt=samples_per_prompt
        )
        return r["accuracy"], r.get("sampled_validity")

    local = not isinstance(teacher_model, RemoteTeacher)  # a served teacher only scores: not measured
    teacher_acc, teacher_sampled = measure(teacher_model) if local else (None, None)
    before_acc, before_sampled = measure(student_model)
    eval_fn = (
        make_eval_fn(task_obj, tokenizer, n=eval_n) if config.eval_every else None
    )  # before/after: measure()
    result = distill(
        student_model,
        teacher_model,
        tokenizer,
        task_obj.make_dataset(4000, seed=config.seed),
        config,
        eval_fn=eval_fn,
        resume_from=resume_from,
    )
    after_acc, after_sampled = measure(result.student)
    return {
        "task": task_obj.name,
        "config": config.to_dict(),
        "method": config.describe(),
        "student_accuracy_before": before_acc,
        "student_accuracy_after": after_acc,
        "student_sampled_before": before_sampled,
        "student_sampled_after": after_sampled,
        "teacher_accuracy": teacher_acc,
        "teacher_sampled": teacher_sampled,
        "steps": config.steps,
        "seconds": result.seconds,
        "seconds_per_step": result.seconds / config.steps,
        "skipped_steps": result.skipped_steps,
        "threads": result.threads,
        "clipped_ratio": _mean_of(result.history, "clipped_ratio"),
        "history": result.history,
    }


def _mean_of(history: list[dict], key: str) -> float | None:
    values = [row[key] for row in history if key in row]
    return sum(values) / len(values) if values else None


#: The demo's two contenders, classic off-policy KD and on-policy distillation.
DEMO_METHODS = {
    "off-policy forward KL (λ=0, β=0)": dict(lmbda=0.0, beta=0.0),
    "on-policy reverse KL (λ=1, β=1)": dict(lmbda=1.0, beta=1.0),
}


def format_table(rows: list[dict]) -> str:
    """A plain-text table of run results (one row per method)."""
    header = f"{'method':<36} {'greedy before':>13} {'greedy after':>12} {'sampled after':>13} {'s/step':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        sampled = r.get("student_sampled_after")
        lines.append(
            f"{r['name']:<36} {r['student_accuracy_before']:>13.3f} {r['student_accuracy_after']:>12.3f} "
            f"{(sampled if sampled is not None else float('nan')):>13.3f} {r['seconds_per_step']:>7.3f}"
        )
    t = rows[0]
    lines.append(
        f"{'teacher':<36} {'':>13} {t['teacher_accuracy']:>12.3f} "
        f"{t['teacher_sampled'] or float('nan'):>13.3f}"
    )
    return "\n".join(lines)


def run_demo(
    task: str = "addition",
    *,
    steps: int = 250,
    seed: int = 0,
    out_dir: str | Path = "odistill_demo",
    batch_size: int = 64,
    lr: float = 1e-3,
    lr_schedule: str = "cosine",
    eval_every: int = 25,
    progress: bool = True,
    threads: int | None = None,
) -> dict:
    """Off-policy forward KL vs on-policy reverse KL at equal student steps: a table and a plot.

    Both runs start from the same shipped warm-started student and the same teacher, with the same
    prompts budget (``steps × batch_size``). Writes ``results.json`` and ``accuracy_vs_step.png`` to
    ``out_dir`` and returns the results.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, kw in DEMO_METHODS.items():
        config = DistillConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            eval_every=eval_every,
            seed=seed,
            progress=progress,
            **kw,
        )
        run = run_distillation(task, config=config, threads=threads)
        run["name"] = name
        rows.append(run)
    plot_path = out / "accuracy_vs_step.png"
    _plot_runs(rows, plot_path, title=f"{rows[0]['task']}: student greedy accuracy at equal steps")
    summary = {"task": rows[0]["task"], "steps": steps, "runs": rows, "plot": str(plot_path)}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["table"] = format_table(rows)
    return summary


def _plot_runs(rows: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in rows:
        evals = [h for h in r["history"] if "eval/accuracy" in h]
        ax.plot(
            [h["step"] for h in evals], [h["eval/accuracy"] for h in evals], marker="o", ms=3, label=r["name"]
        )
    ax.axhline(rows[0]["teacher_accuracy"], color="gray", ls="--", lw=1, label="teacher")
    ax.set(
        xlabel="student optimizer step",
        ylabel="greedy accuracy (held-out prompts)",
        title=title,
        ylim=(0, 1.02),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
