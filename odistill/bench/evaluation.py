"""Evaluate a model on a task: completions from the training sampler, then the task's verifier.

Two numbers matter in distillation experiments::

    accuracy          mean score of greedy completions (temperature 0): what the model "knows"
    sampled_validity  mean score of temperature-1 samples: what the model's distribution looks like
    distinct_valid    mean number of *different* valid answers among a prompt's samples (diversity)

A mode-seeking student has high ``sampled_validity`` and low ``distinct_valid``; a mode-covering one the
opposite. Completions come from :func:`odistill.core.sampler.sample`, the sampler that writes the
training rollouts, so what is measured is what is trained on. ``generate_completions`` is the generic
helper underneath: prompts in, completion strings out.
"""

from __future__ import annotations

import time

import torch

from ..core.sampler import sample
from .tasks import get_task

__all__ = ["generate_completions", "evaluate"]


def generate_completions(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    num_samples: int = 1,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
) -> list[list[str]]:
    """Complete every prompt ``num_samples`` times; returns one list of ``num_samples`` strings per prompt.

    Greedy when ``temperature == 0``, otherwise sampling from the full distribution at that temperature
    (no top-k, no top-p), with :func:`odistill.core.sampler.sample` — the sampler of the training
    rollouts. A completion is the decoded text up to (not including) the first EOS; special tokens the
    model writes before EOS (``<bos>``, ``<unk>``, ``<pad>``) stay in the text, so a verifier sees them
    as malformed rather than having them silently removed. Sampling is seeded (one random stream over
    all batches) and does not disturb the global torch random state.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer (an EOS token is required).
        prompts: list of N prompt strings.
        max_new_tokens: longest completion, EOS included (``task.max_new_tokens``).
        temperature: 0 for greedy, > 0 to sample.
        num_samples: completions per prompt (1 for greedy: all would be identical).
        seed: seeds the sampling.
        batch_size: sequences per sampler call (a prompt's samples count separately).
        progress: show a tqdm bar over batches.

    Example:
        >>> model, tok = load_model("addition-teacher")  # doctest: +SKIP
        >>> generate_completions(model, tok, ["023+456="], max_new_tokens=5)  # doctest: +SKIP
        [['0479']]
    """
    from tqdm.auto import tqdm

    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if num_samples > 1 and temperature == 0:
        raise ValueError("num_samples > 1 needs temperature > 0: greedy completions would all be identical")
    if not prompts:
        return []
    device = next(model.parameters()).device
    per_call = max(1, batch_size // num_samples)  # prompts per sampler call
    texts: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(
            range(0, len(prompts), per_call), desc="generate", disable=not progress, leave=False
        ):
            rollouts = sample(
                model,
                tokenizer,
                prompts[start : start + per_call],
                n=num_samples,
                max_new_tokens=max_new_tokens,
                temperature=float(temperature),
                keep_special_tokens=True,
            )
            texts.extend(rollouts.texts)
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]


def evaluate(
    model,
    tokenizer,
    task,
    *,
    n: int = 500,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
    samples_per_prompt: int | None = None,
    split: str = "test",
    progress: bool = False,
) -> dict:
    """Score ``model`` on ``n`` held-out prompts of ``task``.

    ``accuracy`` is the mean score of one completion per prompt at ``temperature`` (0 = greedy, the
    default): exact match, or validity for tasks with many answers. For multi-answer tasks (or whenever
    ``samples_per_prompt`` is given) it also draws ``samples_per_prompt`` temperature-1 samples per prompt
    and reports ``sampled_validity`` (mean score of the samples) and ``distinct_valid`` (mean number of
    different valid answers per prompt).

    Args:
        model: a causal LM (any ``transformers`` model; put it in eval mode).
        tokenizer: its tokenizer.
        task: a :class:`~odistill.bench.tasks.Task` or a task name.
        n: number of prompts (distinct, from ``split``).
        temperature: temperature of the ``accuracy`` completions.
        seed: seeds the prompts and the sampling.
        batch_size: sequences per sampler call.
        samples_per_prompt: temperature-1 samples per prompt (default 8 for multi-answer tasks, else none).
        split: ``"test"`` (held out, default) or ``"train"``.
        progress: show tqdm bars.

    Returns:
        dict with ``task``, ``n``, ``temperature``, ``accuracy``, ``seconds``, ``examples`` (three
        ``(prompt, completion, score)``), and maybe ``sampled_validity``, ``distinct_valid``,
        ``samples_per_prompt``.

    Example:
        >>> model, tok = load_model("addition-teacher")  # doctest: +SKIP
        >>> evaluate(model, tok, "addition", n=100)["accuracy"]  # doctest: +SKIP
        1.0
    """
    task = get_task(task)
    start = time.perf_counter()
    prompts = task.sample_prompts(n, seed=seed, split=split)
    common = {
        "max_new_tokens": task.max_new_tokens,
        "seed": seed,
        "batch_size": batch_size,
        "progress": progress,
    }
    completions = [
        c[0] for c in generate_completions(model, tokenizer, prompts, temperature=temperature, **common)
    ]
    scores = [task.score(p, c) for p, c in zip(prompts, completions, strict=True)]
    result = {
        "task": task.name,
        "n": len(prompts),
        "temperature": temperature,
        "accuracy": sum(scores) / max(len(scores), 1),
    }
    if samples_per_prompt is None and task.is_multi_answer:
        samples_per_prompt = 8
    if samples_per_prompt:
        samples = generate_completions(
            model, tokenizer, prompts, temperature=1.0, num_samples=samples_per_prompt, **common
        )
        valid = [
            [s for s in group if task.score(p, s) == 1.0] for p, group in zip(prompts, samples, strict=True)
        ]
        result["samples_per_prompt"] = samples_per_prompt
        result["sampled_validity"] = sum(map(len, valid)) / max(len(prompts) * samples_per_prompt, 1)
        result["distinct_valid"] = sum(len(set(v)) for v in valid) / max(len(prompts), 1)
    result["examples"] = [(p, c, s) for p, c, s in list(zip(prompts, completions, scores, strict=True))[:3]]
    result["seconds"] = time.perf_counter() - start
    return result
