"""Where one on-policy step's time goes: sample, teacher score, student forward, loss, backward, optimizer.

The step of ``distill(..., DistillConfig(lmbda=1, beta=1))`` taken apart with odistill's public pieces,
each phase timed on its own (median over steps after one warm-up step)::

    rollouts = odistill.sample(student, tok, prompts, ...)          # sample
    scores = odistill.TeacherScorer(teacher, mode="full")(rollouts)  # score
    logits = odistill.completion_logits(student, rollouts)           # student forward
    loss = odistill.distillation_loss(logits, scores, mask, divergence="reverse_kl")   # loss
    loss.backward()                                                  # backward
    clip_grad_norm_(...); optimizer.step()                           # optimizer

Next to each phase, its **floor**: the same model calls done bare, with nothing around them — for
``sample`` the prefill and one cached call per new token of the tokens it drew (no draw, no masks); for
``score`` and ``student forward`` the model's forward on the same inputs (``logits_to_keep``); for
``backward`` the backward of the same forward's logits times a fixed random tensor; for ``optimizer``
``clip_grad_norm_`` and ``optimizer.step()`` alone. ``phase / floor`` says how much odistill adds
around the model. The whole ``distill()`` step (its own timer, a separate run of the same case) is
reported too, for what the loop adds around the phases.

It uses only the public API, so the same script can time an older checkout
(``PYTHONPATH=<old checkout> python benchmarks/profile_step.py``) and show what changed.

    python benchmarks/profile_step.py                    # the 32k-vocabulary case of bench_step.py
    python benchmarks/profile_step.py --case tiny --steps 20
"""

from __future__ import annotations

import statistics
import sys
import time

from _common import base_parser, machine, markdown_table, setup_torch, write_json

PHASES = ("sample", "score", "student forward", "loss", "backward", "optimizer")
FLOORED = ("sample", "score", "student forward", "backward", "optimizer")


def _bare_forward(model, rollouts, **extra):
    """The model's forward on a rollout batch, as bare as it gets: the logits of the completion rows."""
    import torch

    from odistill.core.forward import position_ids_from_mask

    total, width = rollouts.input_ids.shape[1], rollouts.input_ids.shape[1] - rollouts.prompt_width
    keep = torch.arange(total - width - 1, total - 1)
    return model(
        input_ids=rollouts.input_ids,
        attention_mask=rollouts.attention_mask,
        position_ids=position_ids_from_mask(rollouts.attention_mask),
        logits_to_keep=keep,
        use_cache=False,
        **extra,
    ).logits


def _bare_decode(model, rollouts):
    """The sampler's model calls with the tokens it drew: a prefill, then one cached call per new token."""
    import torch

    from odistill.core.forward import position_ids_from_mask

    width = rollouts.prompt_width
    prompt, attention = rollouts.input_ids[:, :width], rollouts.attention_mask[:, :width]
    positions = position_ids_from_mask(attention)
    out = model(
        input_ids=prompt, attention_mask=attention, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    ones = torch.ones(len(prompt), 1, dtype=attention.dtype)
    last = positions[:, -1:]
    for t in range(rollouts.input_ids.shape[1] - width - 1):
        attention = torch.cat([attention, ones], dim=1)
        last = last + 1
        token = rollouts.input_ids[:, width + t : width + t + 1]
        out = model(
            input_ids=token, attention_mask=attention, position_ids=last, cache=out.cache, use_cache=True
        )
    return out


def profile(case_name: str, steps: int) -> dict:
    import torch
    from bench_step import CASES, build_case

    import odistill

    case = CASES[case_name]
    student, teacher, tok, dataset, desc = build_case(case)
    prompts = list(dataset["prompt"][: case["batch"]])
    scorer = odistill.TeacherScorer(teacher, mode="full")
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    vocab = len(tok)
    times = {phase: [] for phase in PHASES}
    floors = {phase: [] for phase in FLOORED}
    for step in range(steps + 1):
        marks = [time.perf_counter()]
        rollouts = odistill.sample(
            student, tok, prompts, max_new_tokens=case["max_new_tokens"], temperature=1.0, seed=step
        )
        marks.append(time.perf_counter())
        scores = scorer(rollouts)
        marks.append(time.perf_counter())
        logits = odistill.completion_logits(student, rollouts, vocab_size=vocab)
        marks.append(time.perf_counter())
        loss = odistill.distillation_loss(logits, scores, rollouts.completion_mask, divergence="reverse_kl")
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        bare = _floors(student, teacher, rollouts, optimizer)
        if step == 0:
            continue  # warm-up
        for phase, (a, b) in zip(PHASES, zip(marks[:-1], marks[1:], strict=True), strict=True):
            times[phase].append(b - a)
        for phase in FLOORED:
            floors[phase].append(bare[phase])
    medians = {phase: statistics.median(v) for phase, v in times.items()}
    floor_medians = {phase: statistics.median(v) for phase, v in floors.items()}
    return {
        "case": case_name,
        "models": desc,
        "steps": steps,
        "medians": medians,
        "floors": floor_medians,
        "total": sum(medians.values()),
        "times": times,
        "distill_step": _distill_step(case_name, steps),
    }


def _floors(student, teacher, rollouts, optimizer) -> dict:
    """Seconds of each phase's bare model calls on this step's rollouts (the weights are left unchanged)."""
    import torch

    out = {}
    with torch.no_grad():
        start = time.perf_counter()
        _bare_decode(student, rollouts)
        out["sample"] = time.perf_counter() - start
        start = time.perf_counter()
        _bare_forward(teacher, rollouts)
        out["score"] = time.perf_counter() - start
    start = time.perf_counter()
    logits = _bare_forward(student, rollouts)
    out["student forward"] = time.perf_counter() - start
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    loss = (logits * weights).sum()
    start = time.perf_counter()
    loss.backward()
    out["backward"] = time.perf_counter() - start
    saved = [p.detach().clone() for p in student.parameters()]
    state = {
        k: {n: (v.clone() if torch.is_tensor(v) else v) for n, v in s.items()}
        for k, s in optimizer.state.items()
    }
    start = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    out["optimizer"] = time.perf_counter() - start
    with torch.no_grad():
        for p, q in zip(student.parameters(), saved, strict=True):
            p.copy_(q)
    optimizer.state.update(state)
    optimizer.zero_grad(set_to_none=True)
    return out


def _distill_step(case_name: str, steps: int) -> float:
    """Median seconds of one step of ``distill()`` (its own timer) on the same case, after 3 warm-up steps."""
    from bench_step import CASES, _run_odistill, build_case

    case = {**CASES[case_name], "steps": steps, "warmup": 3}
    student, teacher, tok, dataset, _ = build_case(case)
    return statistics.median(_run_odistill(student, teacher, tok, dataset, case)[3:])


def main(argv=None) -> dict:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--case", default="vocab32k", help="a case of bench_step.py (tiny, vocab32k, quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5; quick 2)")
    args = parser.parse_args(argv)
    setup_torch(args.threads)
    case = "quick" if args.quick else args.case
    steps = args.steps or (2 if args.quick else 5)
    import odistill

    info = machine()
    result = profile(case, steps)
    rows = []
    for phase in PHASES:
        median, floor = result["medians"][phase], result["floors"].get(phase)
        rows.append(
            [
                phase,
                f"{median * 1e3:.1f}",
                f"{median / result['total']:.0%}",
                f"{floor * 1e3:.1f}" if floor else "–",
                f"{median / floor:.2f}" if floor else "–",
            ]
        )
    floor_total = sum(result["floors"].values())
    rows.append(
        [
            "sum of phases",
            f"{result['total'] * 1e3:.1f}",
            "100%",
            f"{floor_total * 1e3:.1f}",
            f"{result['total'] / floor_total:.2f}",
        ]
    )
    rows.append(
        [
            "distill() step",
            f"{result['distill_step'] * 1e3:.1f}",
            "",
            "",
            f"{result['distill_step'] / floor_total:.2f}",
        ]
    )
    table = markdown_table(["phase", "ms (median)", "share", "floor ms", "phase / floor"], rows)
    print(
        f"profile_step: case {case} ({result['models']}), {steps} steps, {args.threads} threads, "
        f"odistill from {odistill.__file__}, load {info['load_avg_1_5_15']}",
        file=sys.stderr,
    )
    print(table)
    payload = {
        "benchmark": "profile_step",
        "machine": info,
        "threads": args.threads,
        "odistill": odistill.__file__,
        **result,
        "table_md": table,
    }
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
