"""Run by tests/train/test_token_normalisation.py under `torchrun --nproc_per_node 2`: each process takes
its 8 rows of the 16 fixed rollouts, one step's gradient is accumulated (all-reduced by DDP), and every
process writes it to ``out_dir/grads-rank<R>.pt``."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from test_token_normalisation import DATA, _fixed_rollouts, _models  # noqa: E402

import odistill.train.trainer as trainer  # noqa: E402
from odistill import DistillConfig  # noqa: E402
from odistill.bench.tokenizer import build_char_tokenizer  # noqa: E402

out_dir, estimator, fused = sys.argv[1], sys.argv[2], sys.argv[3] == "fused"
torch.set_num_threads(1)
tok = build_char_tokenizer("0123456789+=")
student, teacher = _models(tok)
fixed = _fixed_rollouts(tok, student)
trainer.make_rollouts = lambda state, step, micro: fixed.rows(
    8 * state.accelerator.process_index, 8 * (state.accelerator.process_index + 1)
)
config = DistillConfig(
    lmbda=1.0,
    estimator=estimator,
    divergence="reverse_kl",
    fused_lm_head=fused,
    batch_size=8,
    progress=False,
    device="cpu",
    steps=1,
)
state = trainer.setup(student, teacher, tok, DATA, config)
row, finite = trainer.accumulate_gradients(state, 1)
assert finite
rank = int(os.environ["RANK"])
torch.save(
    {"grads": [p.grad for p in state.student.parameters()], "world": state.accelerator.num_processes},
    os.path.join(out_dir, f"grads-rank{rank}.pt"),
)
