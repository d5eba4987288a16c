"""Turn the benchmarks' JSON files into ``results.md`` (tables + headline ratios), ``results.json`` and a PNG.

    python benchmarks/report.py [--dir benchmarks/results]

Reads ``jsd.json``, ``step.json``, ``fused.json``, ``teacher_memory.json``, ``steps_to_target.json``,
``estimators.json`` and ``remote.json``
from the folder (whichever exist) and writes ``results.md``, ``results.json`` (everything, merged),
``summary.md`` (the headline table alone, included by the docs' Performance page) and ``ratios.png``.
Any ``extra_*.json`` with a ``title`` and a ``table_md`` is appended as a supplementary section.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import RESULTS, fmt_stats, markdown_table

PARTS = ("jsd", "step", "fused", "teacher_memory", "steps_to_target", "estimators", "remote")
#: The on-policy step's speed-up target (TRL time / odistill time): the lab-bench cases and the rest.
STEP_TARGETS = {"tiny": 1.5, "permutations": 1.5}
STEP_TARGET_DEFAULT = 2.0


#: Where results.md's per-benchmark tables begin (docs/performance.md includes from this line on).
TABLES_MARKER = "<!-- per-benchmark tables -->"
#: The plot's alternative text and caption.
PLOT_ALT = (
    "Bars with min–max whiskers per case: the generalized JSD's peak memory and time, odistill / TRL "
    "(lower is better), and the on-policy step's speed-up, TRL time / odistill time (higher is better); "
    "the dashed red line is each target"
)


def _load(folder: Path) -> dict:
    out = {}
    for name in PARTS:
        path = folder / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def _verdict(value: float | None, ok) -> str:
    if value is None:
        return "not measured"
    if ok is None:
        return "reported"
    return "met" if ok(value) else "**missed**"


def headline(data: dict) -> tuple[list[list[str]], list[dict]]:
    """Rows of the headline table: target, measured (median, min–max), verdict on the median."""
    rows, records = [], []

    def add(what, target, s, ok, note=""):
        med = s["median"] if s else None
        rows.append([what, target, fmt_stats(s) if s else "–", _verdict(med, ok), note])
        records.append(
            {
                "what": what,
                "target": target,
                "stats": s,
                "met": None if med is None or ok is None else bool(ok(med)),
            }
        )

    jsd = data.get("jsd")
    if jsd and jsd.get("peer"):
        for case in jsd["cases"]:
            label = f"JSD β={case['beta']:g} {tuple(case['shape'])}"
            add(
                f"{label}: peak memory above inputs, odistill/TRL",
                "≤ 0.25",
                case.get("memory_ratio"),
                lambda v: v <= 0.25,
            )
            add(f"{label}: time, odistill/TRL", "≤ 1.0", case.get("time_ratio"), lambda v: v <= 1.0)
        acc = jsd.get("accuracy") or []
        worst = max((max(r["odistill_value_rel_err"], r["odistill_grad_rel_err"]) for r in acc), default=None)
        worst_trl = max(
            (max(r.get("odistill_vs_trl_value_rel", 0), r.get("odistill_vs_trl_grad_rel", 0)) for r in acc),
            default=None,
        )
        if worst is not None:
            add(
                "JSD values & gradients vs float64 reference (worst rel. error)",
                "≤ 1e-5",
                {"min": worst, "median": worst, "max": worst, "n": 1},
                lambda v: v <= 1e-5,
            )
        if worst_trl is not None:
            add(
                "JSD values & gradients vs TRL (worst rel. difference)",
                "≤ 1e-5",
                {"min": worst_trl, "median": worst_trl, "max": worst_trl, "n": 1},
                lambda v: v <= 1e-5,
            )
    step = data.get("step")
    if step and step.get("peer"):
        for case in step["cases"]:
            target = STEP_TARGETS.get(case["case"], STEP_TARGET_DEFAULT)
            add(
                f"on-policy step ({case['case']}): speed-up, TRL time / odistill time",
                f"≥ {target:g}",
                case.get("speedup_trl_over_odistill"),
                lambda v, target=target: v >= target,
            )
            if case["case"] not in STEP_TARGETS:
                add(
                    f"on-policy step ({case['case']}): peak memory, odistill/TRL",
                    "< 1",
                    case.get("memory_ratio"),
                    lambda v: v < 1.0,
                )
    fused = data.get("fused")
    if fused:
        size = fused["size"]
        shape = (
            f"({size['batch']}, {size['tokens']}, "
            f"H {size['student_hidden']}/{size['teacher_hidden']}, V {size['vocab']})"
        )
        for case in fused["cases"]:
            for other, name in (("trl", "TRL logits + loss"), ("odistill", "odistill logits + chunked loss")):
                if case.get(f"memory_ratio_vs_{other}"):
                    add(
                        f"fused LM head + JSD β={case['beta']:g} {shape}: peak memory, fused / {name}",
                        "report (stretch)",
                        case[f"memory_ratio_vs_{other}"],
                        None,
                        f"time ratio {fmt_stats(case.get(f'time_ratio_vs_{other}'))}",
                    )
    teacher = data.get("teacher_memory")
    if teacher:
        res = teacher["results"].get("sampled", {})
        add(
            "teacher scoring peak memory, sampled/full",
            "report (O(B·T))",
            res.get("peak_ratio_vs_full"),
            None,
            f"scores kept: {res.get('kept_ratio_vs_full', float('nan')):.1g} of full",
        )
    steps = data.get("steps_to_target")
    if steps:
        add(
            f"steps to 95 % of teacher, on/off-policy ({steps['settings']['task']}, β={steps['beta']:g})",
            "≤ 0.5",
            steps.get("ratio_on_over_off"),
            lambda v: v <= 0.5,
            "" if steps.get("ratio_on_over_off") else "a run did not reach the target",
        )
    for task, summary in (data.get("estimators") or {}).get("summary", {}).items():
        add(
            f"sampled / full estimator greedy-accuracy gain, equal steps ({task})",
            "≥ 0.75",
            summary.get("ratio_equal_steps"),
            lambda v: v >= 0.75,
        )
        add(
            f"sampled / full estimator gain, equal teacher output ({task})",
            "≥ 1",
            summary.get("ratio_equal_teacher_output"),
            lambda v: v >= 1.0,
            "negative: the full run was below its start at that step"
            if ((summary.get("ratio_equal_teacher_output") or {}).get("median") or 0) < 0
            else "",
        )
        lowest = [v for v in summary.get("lowest_gain_by_run", {}).values() if v is not None]
        if lowest:
            add(
                f"sampled estimator: lowest gain over seeds and learning rates ({task})",
                "> 0",
                {"min": min(lowest), "median": min(lowest), "max": min(lowest), "n": len(lowest)},
                lambda v: v > 0,
            )
    for case in (data.get("remote") or {}).get("cases", []):
        if case["case"] == "vocab32k" and case["mode"] == "sampled":
            target = data["remote"].get("target_32k_sampled", 1.3)
            add(
                "served teacher / local teacher step time, V = 32k, sampled (loopback)",
                f"≤ {target:g}",
                case.get("overhead_remote_over_local"),
                lambda v, target=target: v <= target,
            )
    return rows, records


def plot(data: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return False
    jsd, step = data.get("jsd"), data.get("step")
    panels = []
    if jsd and jsd.get("peer"):
        panels += [
            ("memory_ratio", "JSD peak memory above inputs\nodistill / TRL (target ≤ 0.25)", 0.25),
            ("time_ratio", "JSD forward + backward time\nodistill / TRL (target ≤ 1)", 1.0),
        ]
    if step and step.get("peer"):
        panels.append(
            (
                "speedup",
                "on-policy step speed-up, TRL / odistill\n(target ≥ 1.5 lab bench, ≥ 2 at 32k)",
                2.0,
            )
        )
    if not panels:
        return False
    # drawn for a page column of about 740 px: readable there without zooming (taller than 200 px)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.4))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (key, title, target) in zip(axes, panels, strict=True):
        if key == "speedup":
            items = [(c["case"], c.get("speedup_trl_over_odistill")) for c in step["cases"]]
        else:
            items = [
                (
                    f"β={c['beta']:g}\n{c['shape'][0]}×{c['shape'][1]}\n×{round(c['shape'][2] / 1000)}k",
                    c.get(key),
                )
                for c in jsd["cases"]
            ]
        items = [(label, s) for label, s in items if s]
        labels = [label for label, _ in items]
        med = [s["median"] for _, s in items]
        err = [[s["median"] - s["min"] for _, s in items], [s["max"] - s["median"] for _, s in items]]
        ax.bar(range(len(items)), med, yerr=err, capsize=4, color="tab:blue")
        ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
        ax.set_xticks(range(len(items)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(folder: Path = RESULTS) -> Path:
    folder = Path(folder)
    data = _load(folder)
    rows, records = headline(data)
    parts = ["# odistill performance results", ""]
    machines = {name: d.get("machine") for name, d in data.items()}
    first = next((m for m in machines.values() if m), {})
    parts += [
        f"Measured on {first.get('cpu_count', '?')} CPU cores, torch {first.get('torch', '?')}, "
        f"TRL {first.get('trl') or 'not installed'}. Per benchmark: start time, torch threads, load average "
        "(1/5/15 min) at the start (other processes share the machine):",
        "",
    ]
    parts += [
        f"- {name}: {m.get('time')}, {data[name].get('threads', '?')} thread(s), "
        f"load {m.get('load_avg_1_5_15')}"
        for name, m in machines.items()
        if m
    ]
    parts.append("")
    parts += ["Ratios: median (min–max) over paired repeats. Method: `benchmarks/README.md`.", ""]
    if rows:
        parts += [
            "## Headline",
            "",
            markdown_table(["measure", "target", "measured", "verdict", "note"], rows),
            "",
        ]
    titles = {
        "jsd": "Generalized JSD, forward + backward (float32, CPU)",
        "step": "One on-policy step (λ=1, β=1)",
        "fused": "LM head + JSD from the hidden states (fused vs logits then loss)",
        "teacher_memory": "Teacher scoring memory",
        "steps_to_target": "Steps to 95 % of the teacher",
        "estimators": "The full and the sampled estimator on the lab bench (greedy-accuracy gain)",
        "remote": "A teacher served over HTTP (serve-teacher, loopback) vs one in the training process",
    }
    parts += [TABLES_MARKER, ""]  # the docs' Performance page includes from here (the headline is above)
    for name in PARTS:
        if name in data:
            parts += [f"## {titles[name]}", "", data[name].get("table_md", "")]
            if name == "jsd" and data[name].get("accuracy_md"):
                parts += [
                    "",
                    "Accuracy against odistill's float64 reference (error = max|x − ref| / max|ref|):",
                    "",
                    data[name]["accuracy_md"],
                ]
            parts.append("")
    for path in sorted(folder.glob("extra_*.json")):
        extra = json.loads(path.read_text())
        if extra.get("table_md"):
            parts += [
                f"## Supplementary: {extra.get('title', path.stem)}",
                "",
                extra.get("note", ""),
                "",
                extra["table_md"],
                "",
            ]
    if plot(data, folder / "ratios.png"):
        parts += [
            "## The ratios in one plot",
            "",
            f"![{PLOT_ALT}](ratios.png)",
            "",
            f"*{PLOT_ALT}.*",
            "",
        ]
    (folder / "results.md").write_text("\n".join(parts))
    if rows:  # the headline alone, for the docs' Performance page
        (folder / "summary.md").write_text(
            markdown_table(["measure", "target", "measured", "verdict", "note"], rows) + "\n"
        )
    (folder / "results.json").write_text(json.dumps({"headline": records, **data}, indent=1, default=str))
    print(
        f"wrote {folder / 'results.md'}, {folder / 'results.json'}"
        + (", ratios.png" if (folder / "ratios.png").exists() else "")
    )
    return folder / "results.md"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    write_report(Path(args.dir))


if __name__ == "__main__":
    main()
