"""Run by tests/serve/test_remote_teacher.py under `torchrun --nproc_per_node 2`: both processes distil
with one served teacher (their requests reach the server at the same time); each checks every remote
score against the local teacher's scores of its own rollouts and writes what it found."""

import json
import os
import sys

import torch

from odistill import DistillConfig, RemoteTeacher, distill, load_model
from odistill.bench.tasks import get_task
from odistill.core.teacher import TeacherScorer

out_dir, url = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
student, tok = load_model("addition-student")
local = TeacherScorer(load_model("addition-teacher")[0])
remote = RemoteTeacher(url, tokenizer=tok)
differences, rows = [], 0


class Checked:
    """The remote teacher, with each answer compared to the local teacher's on the same rollouts."""

    vocab_size, modes, check_tokenizer = remote.vocab_size, remote.modes, remote.check_tokenizer

    def score(self, rollouts, mode="sampled", *, k=None):
        global rows
        got = remote.score(rollouts, mode, k=k)
        expected = local.score(rollouts, mode, k=k)
        differences.append(float((got.token_logprobs - expected.token_logprobs).abs().max()))
        rows += len(rollouts)
        return got


config = DistillConfig(
    estimator="sampled", lmbda=1.0, steps=3, batch_size=8, max_new_tokens=6, device="cpu", progress=False
)
result = distill(student, Checked(), tok, get_task("addition").make_dataset(100, seed=0), config)
rank = int(os.environ["RANK"])
fingerprint = [float(p.detach().double().sum()) for p in result.student.parameters()]
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"differences": differences, "rows": rows, "fingerprint": fingerprint}, f)
