"""The ``odistill`` command. Run ``odistill --help``, or ``odistill COMMAND --help`` for one command.

Each subcommand is one function ``_cmd_<name>(args)`` registered in :func:`_build_parser`; add a new one
by writing the function and a ``_add_<name>_parser`` next to the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["main", "train_checkpoint"]

_DESCRIPTION = """\
odistill — on-policy distillation of language models, on a laptop CPU.

The lab bench: synthetic tasks with checkable answers (addition, permutations, sorting), tiny
Llama-style models, and, for each task, a trained teacher and a warm-started student shipped inside
the package ("addition-teacher", "addition-student", …).

  odistill demo                                    off-policy vs on-policy distillation, side by side
  odistill distill --task addition --lmbda 1 --beta 1 --json
  odistill eval --task addition                    how good is the shipped teacher?
  odistill eval --task addition --model addition-student --json
  odistill train-teacher --task addition --out runs/my-teacher
  odistill train-teacher --task addition --out runs/my-student --student
"""


def train_checkpoint(task_name: str, out_dir, *, student: bool = False, seed=None, steps=None, size=None,
                     lr=None, eval_n: int = 500, threads=None, progress: bool = True) -> dict:
    """Train a task's teacher (or warm-started student) from scratch with its recipe and save it.

    The recipe (model size, steps, learning rate, batch size, seed) is ``task.teacher_recipe`` or
    ``task.student_recipe``; any argument given here overrides it. The checkpoint is saved in bf16 with
    its tokenizer and an ``odistill.json`` that records the task, the recipe, the training time and the
    held-out scores. Returns that metadata.
    """
    import torch

    from .evaluation import evaluate
    from .models import build_model, count_parameters, save_checkpoint
    from .sft import train_sft
    from .tasks import get_task
    from .tokenizer import build_char_tokenizer

    task = get_task(task_name)
    role = "student" if student else "teacher"
    recipe = task.student_recipe if student else task.teacher_recipe
    size = size or recipe.size
    steps = steps or recipe.steps
    lr = lr or recipe.lr
    seed = recipe.seed if seed is None else seed

    tokenizer = build_char_tokenizer(task.symbols)
    model = build_model(size, tokenizer=tokenizer, seed=seed)
    data = task.make_sft_dataset(steps * recipe.batch_size, seed=seed, role=role)
    print(f"[train] {task.name} {role}: size {size} ({count_parameters(model):,} parameters), "
          f"{steps} steps × batch {recipe.batch_size}, lr {lr}, seed {seed}", file=sys.stderr)
    with _threads(torch, threads):
        history = train_sft(model, tokenizer, data, steps=steps, lr=lr, batch_size=recipe.batch_size,
                            seed=seed, schedule=recipe.schedule, progress=progress)
    out = save_checkpoint(model, tokenizer, out_dir, dtype=torch.bfloat16)  # score what was saved:
    from .models import load_model

    saved, saved_tokenizer = load_model(out)
    scores = evaluate(saved, saved_tokenizer, task, n=eval_n, seed=0, progress=progress)
    metadata = {
        "task": task.name,
        "task_config": task.config(),
        "role": role,
        "size": size,
        "parameters": count_parameters(model),
        "steps": steps,
        "lr": lr,
        "batch_size": recipe.batch_size,
        "schedule": recipe.schedule,
        "seed": seed,
        "train_seconds": round(history["seconds"], 1),
        "final_loss": round(sum(history["loss"][-20:]) / len(history["loss"][-20:]), 5),
        "eval": {k: v for k, v in scores.items() if k not in ("examples", "seconds")},
        "command": f"odistill train-teacher --task {task.name} --out DIR --seed {seed} --steps {steps}"
        + f" --size {size} --lr {lr}" + (" --student" if student else ""),
    }
    save_checkpoint(saved, saved_tokenizer, out, dtype=torch.bfloat16, metadata=metadata)
    return metadata


class _threads:
    """Train with ``threads`` CPU threads (default: 2, or OMP_NUM_THREADS when set), then restore.

    Measured on a 2-core machine shared with another busy process: a 2 × 128 model ran 16 steps/s with
    1 thread but fell to ≈ 2 steps/s with 2 threads (the threads wait on each other). On a busy machine
    use ``--threads 1``.
    """

    def __init__(self, torch, threads=None):
        self.torch, self.threads, self.before = torch, threads, torch.get_num_threads()

    def __enter__(self):
        import os

        if self.threads:
            self.torch.set_num_threads(self.threads)
        elif "OMP_NUM_THREADS" not in os.environ:
            self.torch.set_num_threads(min(2, self.before))
        self.torch.set_flush_denormal(True)  # tiny denormal floats can slow CPU math by 10× or more

    def __exit__(self, *exc):
        self.torch.set_num_threads(self.before)
        self.torch.set_flush_denormal(False)


# ----------------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------------


def _cmd_train_teacher(args) -> int:
    start = time.perf_counter()
    metadata = train_checkpoint(args.task, args.out, student=args.student, seed=args.seed, steps=args.steps,
                                size=args.size, lr=args.lr, eval_n=args.eval_n, threads=args.threads,
                                progress=not args.quiet)
    scores = metadata["eval"]
    line = f"saved {metadata['role']} to {args.out}: accuracy {scores['accuracy']:.3f}"
    if "sampled_validity" in scores:
        line += f", sampled validity {scores['sampled_validity']:.3f}, distinct valid {scores['distinct_valid']:.2f}"
    print(line + f" on {scores['n']} held-out prompts ({time.perf_counter() - start:.0f} s)")
    return 0


def _cmd_eval(args) -> int:
    from .evaluation import evaluate
    from .models import load_model

    model_name = args.model or f"{args.task}-teacher"
    model, tokenizer = load_model(model_name, device=args.device)
    result = evaluate(model, tokenizer, args.task, n=args.n, temperature=args.temperature, seed=args.seed,
                      batch_size=args.batch_size, samples_per_prompt=args.samples, progress=not args.json)
    result["model"] = str(model_name)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}, sort_keys=True))
        return 0
    how = "greedy" if args.temperature == 0 else f"temperature {args.temperature}"
    print(f"{result['model']} on {result['task']}: accuracy {result['accuracy']:.3f} ({how}, "
          f"{result['n']} held-out prompts, {result['seconds']:.1f} s)")
    if "sampled_validity" in result:
        print(f"  temperature-1 samples: validity {result['sampled_validity']:.3f}, "
              f"{result['distinct_valid']:.2f} distinct valid answers per prompt "
              f"(of {result['samples_per_prompt']} samples)")
    for prompt, completion, score in result["examples"]:
        print(f"  {prompt}{completion!r:<14} score {score:.0f}")
    return 0


def _add_train_teacher_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-teacher",
        help="train a task's teacher (or, with --student, its warm-started student) from scratch",
        description="Train a lab-bench model from scratch by supervised fine-tuning on the task's data, "
        "save it (bf16, with its tokenizer) and score it on 500 held-out prompts. With the default seed and "
        "recipe this reproduces the shipped checkpoint (within noise). A teacher is trained until it is "
        "nearly perfect; a student is a smaller model trained briefly, so it writes well-formed but often "
        "wrong answers: the starting point for distillation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, help="task name (see `odistill eval --help` for the list)")
    p.add_argument("--out", required=True, help="folder to write the checkpoint to")
    p.add_argument("--student", action="store_true", help="train the warm-started student instead of the teacher")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the recipe's, 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the recipe's)")
    p.add_argument("--size", default=None, help="model size from odistill.models.MODEL_SIZES (default: the recipe's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    p.add_argument("--eval-n", type=int, default=500, help="held-out prompts to score the result on")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default 2, or OMP_NUM_THREADS); use 1 when the machine is busy")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train_teacher)


def _add_eval_parser(subparsers) -> None:
    from .tasks import list_tasks

    p = subparsers.add_parser(
        "eval",
        help="score a model on held-out prompts of a task",
        description="Generate completions for held-out prompts (batched, with a KV cache) and score them with "
        "the task's verifier. `accuracy` is greedy exact match (validity for tasks with many answers); for "
        "multi-answer tasks it also samples at temperature 1 and reports the validity and diversity of the "
        "samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=list_tasks(), help="which task")
    p.add_argument("--model", default=None,
                   help="shipped name (e.g. addition-student), local folder, or hub id (default: TASK-teacher)")
    p.add_argument("--n", type=int, default=500, help="number of held-out prompts")
    p.add_argument("--temperature", type=float, default=0.0, help="temperature for `accuracy` (0 = greedy)")
    p.add_argument("--samples", type=int, default=None,
                   help="temperature-1 samples per prompt for validity/diversity (default 8 for multi-answer tasks)")
    p.add_argument("--seed", type=int, default=0, help="seed for the prompts and the sampling")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per generate call")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--json", action="store_true", help="print one JSON object (task, model, accuracy, n, …)")
    p.set_defaults(func=_cmd_eval)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odistill", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .cli_distill import add_demo_parser, add_distill_parser

    add_demo_parser(subparsers)
    add_distill_parser(subparsers)
    _add_train_teacher_parser(subparsers)
    _add_eval_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``odistill`` command; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as error:  # a wrong name or argument: say what, not a traceback
        print(f"odistill {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # distill has saved a checkpoint if it had an output_dir
        print(f"odistill {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
