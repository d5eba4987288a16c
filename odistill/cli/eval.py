"""``odistill eval``: score a model on held-out prompts of a lab-bench task."""

from __future__ import annotations

import argparse
import json

from ..bench.evaluation import evaluate
from ..bench.models import load_model
from ..bench.tasks import list_tasks

__all__ = ["add_parser", "run"]


def run(args) -> int:
    model_name = args.model or f"{args.task}-teacher"
    model, tokenizer = load_model(model_name, device=args.device)
    result = evaluate(
        model,
        tokenizer,
        args.task,
        n=args.n,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        samples_per_prompt=args.samples,
        progress=not args.json,
    )
    result["model"] = str(model_name)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}, sort_keys=True))
        return 0
    how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}"
    print(
        f"{result['model']} on {result['task']}: accuracy {result['accuracy']:.3f} ({how}, "
        f"{result['n']} held-out prompts, {result['seconds']:.1f} s)"
    )
    if "sampled_validity" in result:
        print(
            f"  temperature-1 samples: validity {result['sampled_validity']:.3f}, "
            f"{result['distinct_valid']:.2f} distinct valid answers per prompt "
            f"(of {result['samples_per_prompt']} samples)"
        )
    for prompt, completion, score in result["examples"]:
        print(f"  {prompt}{completion!r:<14} score {score:.0f}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score a model on held-out prompts of a task",
        description="Generate completions for held-out prompts (batched, with a KV cache, by the sampler "
        "that writes the training rollouts) and score them with the task's verifier. `accuracy` is greedy "
        "exact match (validity for tasks with many answers); for multi-answer tasks it also samples at "
        "temperature 1 and reports the validity and diversity of the samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=list_tasks(), help="which task")
    p.add_argument(
        "--model",
        default=None,
        help="shipped name (e.g. addition-student), local folder, or hub id (default: TASK-teacher)",
    )
    p.add_argument("--n", type=int, default=500, help="number of held-out prompts")
    p.add_argument("--temperature", type=float, default=0.0, help="temperature for `accuracy` (0 = greedy)")
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="temperature-1 samples per prompt for validity/diversity (default 8 for multi-answer tasks)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts and the sampling")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per sampler call")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object (task, model, accuracy, n, …)")
    p.set_defaults(func=run)
