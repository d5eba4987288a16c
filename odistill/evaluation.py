"""Evaluate a model on a task: batched generation with a KV cache, then the task's verifier.

Two numbers matter in distillation experiments::

    accuracy          mean score of greedy completions (temperature 0): what the model "knows"
    sampled_validity  mean score of temperature-1 samples: what the model's distribution looks like
    distinct_valid    mean number of *different* valid answers among a prompt's samples (diversity)

A mode-seeking student has high ``sampled_validity`` and low ``distinct_valid``; a mode-covering one the
opposite. ``generate_completions`` is the generic helper underneath: prompts in, completion strings out.
"""

from __future__ import annotations

import time

import torch

__all__ = ["generate_completions", "evaluate"]


def _cut_at_eos(token_ids: list[int], eos_token_id: int) -> list[int]:
    return token_ids[: token_ids.index(eos_token_id)] if eos_token_id in token_ids else token_ids


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

    Greedy when ``temperature == 0``, otherwise ancestral sampling from the full distribution at that
    temperature (no top-k, no top-p). Prompts are left-padded into batches and ``model.generate`` runs with
    the KV cache. A completion is the decoded text up to (not including) the first EOS; special tokens the
    model writes before EOS (``<bos>``, ``<unk>``, ``<pad>``) stay in the text, so a verifier sees them as
    malformed rather than having them silently removed. Sampling is seeded and does not disturb the
    global torch random state.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer, with a pad token; padding side is forced to left during the call.
        prompts: list of N prompt strings.
        max_new_tokens: longest completion, EOS included (``task.max_new_tokens``).
        temperature: 0 for greedy, > 0 to sample.
        num_samples: completions per prompt (1 for greedy: all would be identical).
        seed: seeds the sampling.
        batch_size: sequences per ``generate`` call (a prompt's samples count separately).
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
    device = next(model.parameters()).device
    flat = [p for p in prompts for _ in range(num_samples)]  # each prompt repeated num_samples times
    texts: list[str] = []
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    sampling = {"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0}
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(seed)
            starts = range(0, len(flat), batch_size)
            for start in tqdm(starts, desc="generate", disable=not progress, leave=False):
                batch = tokenizer(flat[start : start + batch_size], return_tensors="pt", padding=True).to(device)
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **(sampling if temperature > 0 else {"do_sample": False}),
                )  # (b, prompt_len + new)
                new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()  # (b, new)
                for ids in new_tokens:
                    texts.append(tokenizer.decode(_cut_at_eos(ids, tokenizer.eos_token_id)))
    finally:
        tokenizer.padding_side = padding_side
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
        task: a :class:`~odistill.tasks.Task` or a task name.
        n: number of prompts (distinct, from ``split``).
        temperature: temperature of the ``accuracy`` completions.
        seed: seeds the prompts and the sampling.
        batch_size: sequences per ``generate`` call.
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
    from .tasks import get_task

    task = get_task(task)
    start = time.perf_counter()
    prompts = task.sample_prompts(n, seed=seed, split=split)
    common = {"max_new_tokens": task.max_new_tokens, "seed": seed, "batch_size": batch_size, "progress": progress}
    completions = [c[0] for c in generate_completions(model, tokenizer, prompts, temperature=temperature, **common)]
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
        valid = [[s for s in group if task.score(p, s) == 1.0] for p, group in zip(prompts, samples, strict=True)]
        result["samples_per_prompt"] = samples_per_prompt
        result["sampled_validity"] = sum(map(len, valid)) / max(len(prompts) * samples_per_prompt, 1)
        result["distinct_valid"] = sum(len(set(v)) for v in valid) / max(len(prompts), 1)
    result["examples"] = [(p, c, s) for p, c, s in list(zip(prompts, completions, scores, strict=True))[:3]]
    result["seconds"] = time.perf_counter() - start
    return result
