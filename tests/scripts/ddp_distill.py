"""Run by tests/train/test_distributed.py under `torchrun --nproc_per_node 2`: distil on CPU with gloo and
write, per process, what it saw and a fingerprint of the trained weights."""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import make_tiny_llama  # noqa: E402

from odistill import DistillConfig, distill  # noqa: E402
from odistill.bench.tokenizer import build_char_tokenizer  # noqa: E402

out_dir = sys.argv[1]
fused = len(sys.argv) > 2 and sys.argv[2] == "fused"  # the fused LM-head loss (hidden states through DDP)
torch.set_num_threads(1)
tok = build_char_tokenizer("0123456789+=")
student = make_tiny_llama(len(tok), seed=0)
teacher = make_tiny_llama(len(tok), seed=1, hidden=48)
data = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]
seen = []
import odistill.train.steps as trainer_module  # noqa: E402

original = trainer_module.sample


def spy(model, tokenizer, prompts, **kw):
    seen.extend(prompts)
    return original(model, tokenizer, prompts, **kw)


trainer_module.sample = spy
cfg = DistillConfig(
    lmbda=1.0,
    steps=3,
    batch_size=4,
    max_new_tokens=4,
    lr=1e-2,
    device="cpu",
    progress=False,
    fused_lm_head=fused,
)
result = distill(student, teacher, tok, data, cfg)
rank = int(os.environ["RANK"])
fingerprint = [float(p.detach().double().sum()) for p in result.student.parameters()]
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump(
        {
            "world": int(os.environ["WORLD_SIZE"]),
            "prompts": seen,
            "fingerprint": fingerprint,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
        },
        f,
    )
