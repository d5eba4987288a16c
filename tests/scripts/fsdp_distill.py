"""Run by tests/train/test_fsdp.py under a 2-process launcher (torchrun, or accelerate launch with
configs/accelerate/fsdp_cpu.yaml): distil on CPU with gloo, with and without FSDP, and write what each
process saw.

Runs, each from the same initial weights and seed:
  ddp       plain data parallelism (the reference)
  fsdp      the student sharded (fully_shard), a checkpoint every 2 steps, an eval_fn
  teacher   the student and the teacher sharded
  resumed   FSDP again, resumed from the fsdp run's checkpoint of step 2
  launcher  (only when asked for) the plain config under `accelerate launch --config_file
            configs/accelerate/fsdp_cpu.yaml`: sharded because the launcher says so
The student's EOS logit is raised, so that completions end at different steps on the two processes: the
decode loop must keep both calling the sharded model until both are done.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import make_tiny_llama  # noqa: E402

from odistill import DistillConfig, distill  # noqa: E402
from odistill.bench.tokenizer import build_char_tokenizer  # noqa: E402
from odistill.train.checkpoint import save_student  # noqa: E402
from odistill.train.sharding import full_state_dict, is_sharded  # noqa: E402

out_dir = sys.argv[1]
only = sys.argv[2].split(",") if len(sys.argv) > 2 else ["ddp", "fsdp", "teacher", "resumed"]
torch.set_num_threads(1)
tok = build_char_tokenizer("0123456789+=")
data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]
rank = int(os.environ["RANK"])


def models():
    student = make_tiny_llama(len(tok), seed=0, layers=2)
    boost = torch.zeros(len(tok))
    boost[tok.eos_token_id] = 2.5  # about one completion token in three is EOS: ragged stops
    student.lm_head.register_forward_hook(lambda module, args, out: out + boost)
    return student, make_tiny_llama(len(tok), seed=1, hidden=48, layers=2)


def config(**kw):
    base = dict(
        lmbda=1.0,
        beta=1.0,
        steps=4,
        batch_size=3,
        max_new_tokens=8,
        lr=1e-2,
        device="cpu",
        progress=False,
        seed=3,
    )
    return DistillConfig(**{**base, **kw})


lengths = []


def eval_fn(student):  # greedy and sampled completions through the (sharded) student
    from odistill.core.sampler import sample

    rollouts = sample(student, tok, [f"{rank}+{rank}="] * 2, max_new_tokens=8, seed=rank)
    lengths.append(rollouts.completion_mask.sum(1).tolist())
    return {"sharded": float(is_sharded(student))}


def weights(student):
    state = full_state_dict(student) if is_sharded(student) else student.state_dict()
    return {name: float(t.double().sum()) for name, t in sorted(state.items())}


report = {"world": int(os.environ["WORLD_SIZE"]), "backend": None}
runs = {
    "ddp": dict(cfg=config()),
    "fsdp": dict(cfg=config(fsdp=True, save_every=2, output_dir=f"{out_dir}/fsdp"), eval_fn=eval_fn),
    "teacher": dict(cfg=config(fsdp=True, fsdp_shard_teacher=True)),
    "resumed": dict(cfg=config(fsdp=True), resume=f"{out_dir}/fsdp/checkpoint-000002"),
    "launcher": dict(cfg=config()),
}
for name, run in runs.items():
    if name not in only:
        continue
    student, teacher = models()
    result = distill(
        student, teacher, tok, data, run["cfg"], eval_fn=run.get("eval_fn"), resume_from=run.get("resume")
    )
    report["backend"] = torch.distributed.get_backend()
    rows = [r for r in result.history if "loss" in r]
    report[name] = {
        "sharded": is_sharded(result.student),
        "weights": weights(result.student),
        "losses": [r["loss"] for r in rows],
        "lengths": [r["completion_length"] for r in rows],
        "evals": [r.get("eval/sharded") for r in result.evals()],
    }
    if name == "fsdp":
        report[name]["eval_lengths"] = lengths
        save_student(result.student, f"{out_dir}/final", tok)
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
