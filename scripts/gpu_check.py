"""The GPU check: what odistill does on one GPU, in a few minutes, written to one JSON file.

    python scripts/gpu_check.py --out gpu_check.json             # on a machine with a CUDA GPU
    python scripts/gpu_check.py --out dry.json --dry-run         # the same steps at toy sizes on CPU

No hub access is needed: the models are random-init Qwen2 models of Qwen2.5-0.5B's and Qwen2.5-1.5B's
shapes (vocabulary 151,936), built from configs with a locally trained tokenizer. Each check records
``status`` (ok / failed / skipped, with the reason), its seconds and its numbers; a check that fails
does not stop the others. The file is rewritten after every check, so a run cut short keeps what it did.

Checks, in order (each skipped when what it needs is not installed):

  card        torch, CUDA, the GPU, package versions
  models      the two random Qwen2 models and the tokenizer, saved as folders
  step        one on-policy step (λ = 1, β = 1, bf16): odistill vs TRL's GKDTrainer, median s/step over
              the steps after warm-up, and peak GPU memory; each in its own process
  fused       odistill's fused LM-head JSD (β = 0.5) vs Liger-Kernel's LigerFusedLinearJSD: value,
              forward + backward time and peak memory at N = 4096 tokens, V = 151,936
  vllm        the vLLM sampling backend: the recorded log-probs against the student's own forward pass,
              sampling time against the "hf" decode loop, and 3 distillation steps (weight sync)
  notebooks   papermill runs of notebooks 05 (its longer profile) and 07 (its gpu profile, with the local
              model folders as TEACHER_ID / STUDENT_ID)

``scripts/gpu_check.sh`` wraps it for a machine without network (installs carried wheels first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # Qwen2.5-0.5B / -1.5B shapes; the dry run's toy shapes
    "gpu": {
        "vocab": 151_936,
        "student": {"layers": 24, "hidden": 896, "heads": 14, "kv_heads": 2, "mlp": 4864},
        "teacher": {"layers": 28, "hidden": 1536, "heads": 12, "kv_heads": 2, "mlp": 8960},
        "batch": 8,
        "max_new_tokens": 128,
        "steps": 6,
        "warmup": 2,
        "fused_tokens": 4096,
    },
    "dry": {
        "vocab": 3000,
        "student": {"layers": 1, "hidden": 32, "heads": 2, "kv_heads": 1, "mlp": 64},
        "teacher": {"layers": 1, "hidden": 48, "heads": 2, "kv_heads": 1, "mlp": 96},
        "batch": 2,
        "max_new_tokens": 8,
        "steps": 2,
        "warmup": 1,
        "fused_tokens": 64,
    },
}
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain gradient descent in one sentence.",
    "List three prime numbers.",
    "What does a compiler do?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Name a famous physicist.",
]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "odistill",
        "torch",
        "transformers",
        "accelerate",
        "trl",
        "liger-kernel",
        "vllm",
        "papermill",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def check_card(ctx) -> dict:
    import torch

    card = {"python": sys.version.split()[0], "packages": _versions(), "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        card.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpus=torch.cuda.device_count(),
        )
    return card


def _tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer with ChatML special tokens, trained here on a little text (no download)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = [p * 3 for p in PROMPTS] + [Path(__file__).read_text()]
    backend.train_from_iterator(text, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=template,
        padding_side="left",
    )


def check_models(ctx) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    size, out = ctx["size"], ctx["work"] / "models"
    tok = _tokenizer(min(size["vocab"], 3000))
    info = {}
    for role, seed in (("student", 0), ("teacher", 1)):
        dims = size[role]
        torch.manual_seed(seed)
        config = Qwen2Config(
            vocab_size=size["vocab"],  # a padded head, as in Qwen2.5: more rows than the tokenizer's tokens
            hidden_size=dims["hidden"],
            intermediate_size=dims["mlp"],
            num_hidden_layers=dims["layers"],
            num_attention_heads=dims["heads"],
            num_key_value_heads=dims["kv_heads"],
            max_position_embeddings=2048,
            tie_word_embeddings=role == "student",
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
        )
        model = Qwen2ForCausalLM(config)
        model.save_pretrained(out / role)
        tok.save_pretrained(out / role)
        info[role] = {"parameters": sum(p.numel() for p in model.parameters()), "path": str(out / role)}
        del model
    info["tokenizer_size"] = len(tok)
    ctx["models"] = {role: out / role for role in ("student", "teacher")}
    return info


# ---------------------------------------------------------------- the on-policy step, in child processes


def _step_worker(impl: str, student_dir: str, teacher_dir: str, size: dict, device: str) -> dict:
    import tempfile

    import torch

    import odistill as od

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    student, tok = od.load_model(
        student_dir, dtype=torch.float32, device=device
    )  # bf16 autocast on both sides
    teacher, _ = od.load_model(teacher_dir, dtype=dtype, device=device)
    rows = [{"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]} for i in range(256)]
    steps = size["warmup"] + size["steps"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if impl == "odistill":
        config = od.DistillConfig(
            lmbda=1.0, beta=1.0, batch_size=size["batch"], max_new_tokens=size["max_new_tokens"], steps=steps,
            lr=1e-5, device=device, mixed_precision="bf16" if device == "cuda" else "no", progress=False,
        )  # fmt: skip
        result = od.distill(student, teacher, tok, rows, config)
        times = [r["seconds"] for r in result.history if "seconds" in r]
    else:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        times = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t)

        data = Dataset.from_list(
            [{"messages": r["messages"] + [{"role": "assistant", "content": "ok"}]} for r in rows]
        )
        with tempfile.TemporaryDirectory() as tmp:
            args = GKDConfig(
                output_dir=tmp, per_device_train_batch_size=size["batch"], max_steps=steps, lmbda=1.0,
                beta=1.0, max_new_tokens=size["max_new_tokens"], temperature=1.0, bf16=device == "cuda",
                use_cpu=device == "cpu", gradient_checkpointing=False, report_to=[], save_strategy="no",
                learning_rate=1e-5, lr_scheduler_type="constant", disable_tqdm=True, seed=0,
                logging_steps=10_000,
            )  # fmt: skip
            GKDTrainer(
                model=student, teacher_model=teacher, args=args, train_dataset=data, processing_class=tok,
                callbacks=[Timer()],
            ).train()  # fmt: skip
    measured = times[size["warmup"] :]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"median_s": statistics.median(measured), "step_s": measured, "peak_gib": peak}


def check_step(ctx) -> dict:
    out = {}
    for impl in ("odistill", "trl"):
        if impl == "trl" and not _importable("trl"):
            out[impl] = {"status": "skipped", "reason": "trl is not installed"}
            continue
        args = [
            impl,
            str(ctx["models"]["student"]),
            str(ctx["models"]["teacher"]),
            json.dumps(ctx["size"]),
            ctx["device"],
        ]
        proc = subprocess.run(
            [sys.executable, __file__, "--step-worker", *args],
            capture_output=True, text=True, timeout=ctx["timeout"],
        )  # fmt: skip
        if proc.returncode != 0:
            out[impl] = {"status": "failed", "error": proc.stderr[-2000:]}
            continue
        out[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
    if any(part.get("status") == "failed" for part in out.values()):
        out["status"] = "failed"
    if "median_s" in out.get("odistill", {}) and "median_s" in out.get("trl", {}):
        out["trl_over_odistill"] = out["trl"]["median_s"] / out["odistill"]["median_s"]
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------- the fused loss against Liger-Kernel


def _timed(fn, device, repeats=5):
    import torch

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up (compilation, autotuning)
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        value = fn()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return value, statistics.median(times), peak


def check_fused(ctx) -> dict:
    import torch

    from odistill.core.fused import fused_linear_divergence

    size, device = ctx["size"], ctx["device"]
    n, v = size["fused_tokens"], size["vocab"]
    hs, ht = size["student"]["hidden"], size["teacher"]["hidden"]
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    xs = (torch.randn(n, hs, generator=gen) * 0.5).to(device, dtype)
    xt = (torch.randn(n, ht, generator=gen) * 0.5).to(device, dtype)
    ws = (torch.randn(v, hs, generator=gen) * 0.02).to(device, dtype)
    wt = (torch.randn(v, ht, generator=gen) * 0.02).to(device, dtype)

    def ours():
        s, w = xs.detach().requires_grad_(), ws.detach().requires_grad_()
        loss = fused_linear_divergence("jsd", s, w, xt, wt, weight=0.5)
        loss.backward()
        return float(loss.detach())

    out = {"tokens": n, "vocab": v}
    out["odistill"] = dict(zip(("loss", "seconds", "peak_gib"), _timed(ours, device), strict=True))
    if not _importable("liger_kernel"):
        out["liger"] = {"status": "skipped", "reason": "liger-kernel is not installed"}
        return out
    if device != "cuda":
        out["liger"] = {"status": "skipped", "reason": "Liger-Kernel's kernels are Triton GPU kernels"}
        return out
    from liger_kernel.transformers import LigerFusedLinearJSD

    liger = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0)

    def theirs():
        s, w = xs.detach().requires_grad_(), ws.detach().requires_grad_()
        loss = liger(s, w, xt, wt)
        loss.backward()
        return float(loss.detach())

    out["liger"] = dict(zip(("loss", "seconds", "peak_gib"), _timed(theirs, device), strict=True))
    out["loss_difference"] = abs(out["liger"]["loss"] - out["odistill"]["loss"])
    out["liger_over_odistill_seconds"] = out["liger"]["seconds"] / out["odistill"]["seconds"]
    return out


# ---------------------------------------------------------------- vLLM


def check_vllm(ctx) -> dict:
    if not _importable("vllm"):
        return {"status": "skipped", "reason": "vllm is not installed"}
    if ctx["device"] != "cuda":
        return {"status": "skipped", "reason": "vLLM samples on a CUDA GPU"}
    import torch

    import odistill as od
    from odistill.core.forward import completion_logits

    student, tok = od.load_model(ctx["models"]["student"], dtype=torch.float32, device="cuda")
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    kw = dict(n=4, max_new_tokens=ctx["size"]["max_new_tokens"], seed=0)
    timings = {}
    for backend in ("hf", "vllm"):
        od.sample(
            student, tok, prompts[:2], max_new_tokens=4, seed=0, backend=backend
        )  # warm-up / engine start
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        rollouts = od.sample(student, tok, prompts, backend=backend, **kw)
        torch.cuda.synchronize()
        timings[backend] = time.perf_counter() - t0
    with torch.no_grad():
        lp = torch.log_softmax(completion_logits(student, rollouts).float(), -1)
    own = lp.gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = rollouts.completion_mask
    gap = (rollouts.sampling_logprobs - own)[mask].abs()
    teacher, _ = od.load_model(ctx["models"]["teacher"], dtype=torch.bfloat16, device="cuda")
    config = od.DistillConfig(
        sampler_backend="vllm", lmbda=1.0, steps=3, batch_size=4, max_new_tokens=32, lr=1e-5, device="cuda",
        progress=False,
    )  # fmt: skip
    result = od.distill(student, teacher, tok, [{"messages": p} for p in prompts], config)
    return {
        "sample_seconds": timings,
        "hf_over_vllm": timings["hf"] / timings["vllm"],
        "logprob_gap_max": float(gap.max()),
        "logprob_gap_median": float(gap.median()),
        "distill_losses": [r["loss"] for r in result.history if "loss" in r],
    }


# ---------------------------------------------------------------- notebooks


def check_notebooks(ctx) -> dict:
    if not _importable("papermill"):
        return {"status": "skipped", "reason": "papermill is not installed"}
    out = {}
    jobs = {
        "05_on_policy_distillation": ["-p", "PROFILE", "full" if ctx["device"] == "cuda" else "tiny"],
        "07_scaling_up": [
            "-p", "PROFILE", "gpu" if ctx["device"] == "cuda" else "tiny",
            "-p", "TEACHER_ID", str(ctx["models"]["teacher"]),
            "-p", "STUDENT_ID", str(ctx["models"]["student"]),
        ],
    }  # fmt: skip
    for name, params in jobs.items():
        target = ctx["work"] / f"{name}.out.ipynb"
        cmd = [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"), str(target)]
        cmd += [*params, "-p", "DEVICE", ctx["device"], "--cwd", str(ROOT / "notebooks"), "--no-progress-bar"]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ctx["timeout"])
            ok = proc.returncode == 0
            out[name] = {"status": "ok" if ok else "failed", "seconds": time.perf_counter() - t0}
            if not ok:
                out[name]["error"] = proc.stderr[-2000:]
        except subprocess.TimeoutExpired:
            out[name] = {"status": "failed", "error": f"timed out after {ctx['timeout']} s"}
    return out


CHECKS = {
    "card": check_card,
    "models": check_models,
    "vllm": check_vllm,
    "step": check_step,
    "fused": check_fused,
    "notebooks": check_notebooks,
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on CPU: check that every step runs")
    parser.add_argument(
        "--only", default=None, help=f"comma-separated checks (default all: {', '.join(CHECKS)})"
    )
    parser.add_argument(
        "--work", default=None, help="folder for the models and notebook outputs (default: a temp)"
    )
    parser.add_argument("--timeout", type=int, default=240, help="seconds allowed to each child process")
    parser.add_argument("--step-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_worker:
        impl, student, teacher, size, device = args.step_worker
        print(json.dumps(_step_worker(impl, student, teacher, json.loads(size), device)))
        return 0
    import tempfile

    import torch

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if not args.dry_run and device == "cpu":
        print("no CUDA GPU here: use --dry-run for the CPU check", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="odistill-gpu-check-"))
    ctx = {
        "size": SIZES["dry" if args.dry_run else "gpu"],
        "device": device,
        "work": work,
        "timeout": args.timeout,
    }
    wanted = args.only.split(",") if args.only else list(CHECKS)
    report = {"dry_run": args.dry_run, "device": device, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for name in ["card", "models", *[n for n in CHECKS if n not in ("card", "models")]]:
        if name not in wanted and name not in ("card", "models"):
            continue
        t0 = time.perf_counter()
        try:
            result = CHECKS[name](ctx)
            entry = {"status": result.pop("status", "ok"), **result}
        except Exception as error:  # one failing check must not stop the others
            entry = {
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "trace": traceback.format_exc()[-3000:],
            }
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        report[name] = entry
        print(f"[gpu-check] {name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    failed = [n for n in report if isinstance(report[n], dict) and report[n].get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
