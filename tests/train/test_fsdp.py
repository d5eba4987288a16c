"""FSDP (torch's fully_shard) on two CPU processes (gloo): the sharded student learns what the data-parallel
one learns, a sharded teacher changes nothing, checkpoints resume exactly and load anywhere, and the
shipped accelerate config turns it on. Plus the single-process pieces: settings, errors, stop_together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, make_tiny_llama, run_two_processes

from odistill import DistillConfig
from odistill.core.sampler import sample, stop_together
from odistill.train.checkpoint import STATE_FILE, _keyed_by_name, load_training_checkpoint
from odistill.train.config import ConfigError
from odistill.train.runtime import check_launch
from odistill.train.sharding import fsdp_settings

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "fsdp_distill.py"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _reports(out: Path):
    return [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    run_two_processes(SCRIPT, out, timeout=400)
    return out, _reports(out)


def _close(a: dict, b: dict, rel: float) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= rel * (1 + abs(a[k])) for k in a)


@pytest.mark.slow
def test_sharded_student_learns_what_the_data_parallel_one_learns(fsdp_runs):
    _, (r0, r1) = fsdp_runs
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    assert not r0["ddp"]["sharded"] and r0["fsdp"]["sharded"] and r0["teacher"]["sharded"]
    # the same numbers up to float summation order (reduce-scatter vs all-reduce): per tensor sums of the
    # weights after 4 steps, and each process's losses
    assert _close(r0["ddp"]["weights"], r0["fsdp"]["weights"], 1e-5)
    for r in (r0, r1):
        assert r["ddp"]["losses"] == pytest.approx(r["fsdp"]["losses"], rel=1e-5, abs=1e-7)
    # the student did train (the reference is not a no-op)
    assert r0["ddp"]["losses"][-1] < 0.5 * r0["ddp"]["losses"][0]
    # the full weights exist on rank 0 only (one full copy); rank 0 of DDP holds them anyway
    assert r1["fsdp"]["weights"] == {} and r1["ddp"]["weights"] == r0["ddp"]["weights"]


@pytest.mark.slow
def test_ragged_stops_are_sampled_together(fsdp_runs):
    """Completions ended at different steps on the two processes (so a process would have stopped calling
    the sharded model early), yet nothing hung and the samples equal the data-parallel run's."""
    _, (r0, r1) = fsdp_runs
    assert r0["fsdp"]["lengths"] != r1["fsdp"]["lengths"]
    assert r0["fsdp"]["lengths"] == r0["ddp"]["lengths"] and r1["fsdp"]["lengths"] == r1["ddp"]["lengths"]
    # eval_fn ran on both processes (before and after training), through the sharded student
    assert r0["fsdp"]["evals"] == [1.0, 1.0]
    assert len(r0["fsdp"]["eval_lengths"]) == len(r1["fsdp"]["eval_lengths"]) == 2


@pytest.mark.slow
def test_sharded_teacher_scores_exactly_like_the_replicated_one(fsdp_runs):
    _, (r0, r1) = fsdp_runs
    assert r0["teacher"]["weights"] == r0["fsdp"]["weights"]
    assert r0["teacher"]["losses"] == r0["fsdp"]["losses"] and r1["teacher"]["losses"] == r1["fsdp"]["losses"]


@pytest.mark.slow
def test_fsdp_checkpoint_resumes_exactly(fsdp_runs):
    out, (r0, r1) = fsdp_runs
    assert sorted(p.name for p in (out / "fsdp").glob("checkpoint-*")) == [
        "checkpoint-000002",
        "checkpoint-000004",
    ]
    assert r0["resumed"]["weights"] == r0["fsdp"]["weights"]
    assert r0["resumed"]["losses"] == r0["fsdp"]["losses"]
    assert r1["resumed"]["losses"][2:] == r1["fsdp"]["losses"][2:]


@pytest.mark.slow
def test_fsdp_checkpoint_and_final_model_load_without_fsdp(fsdp_runs, char_tokenizer):
    """The folders are plain save_pretrained folders: one process loads them, weights and Adam state."""
    from transformers import AutoModelForCausalLM

    out, (r0, _) = fsdp_runs
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    sums = {name: float(t.double().sum()) for name, t in sorted(final.state_dict().items())}
    assert _close(sums, r0["fsdp"]["weights"], 1e-12)

    path = out / "fsdp" / "checkpoint-000002"
    saved = torch.load(path / STATE_FILE, weights_only=False)
    assert saved["optimizer_keys"] == "name"
    student = make_tiny_llama(len(char_tokenizer), seed=0, layers=2)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    cfg = DistillConfig.load(path / "distill_config.json")
    first, history = load_training_checkpoint(
        path, student=student, optimizer=optimizer, scheduler=scheduler, rngs={}, config=cfg
    )
    assert first == 3 and [r["step"] for r in history if "loss" in r] == [1, 2]
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(dict(student.named_parameters())[name], before[name])
    index = [n for n, _ in student.named_parameters()].index(name)
    assert torch.equal(
        optimizer.state_dict()["state"][index]["exp_avg"], saved["optimizer"]["state"][name]["exp_avg"]
    )
    assert optimizer.state_dict()["state"][index]["step"] == 2


@pytest.mark.slow
def test_the_shipped_accelerate_config_turns_fsdp_on(fsdp_runs, tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml` with a config that does not ask
    for FSDP: the launcher's settings shard the student, with the same result as fsdp=True."""
    _, (r0, _) = fsdp_runs
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/fsdp_cpu.yaml")]
    cmd += ["--main_process_port", str(free_port()), str(SCRIPT), str(tmp_path), "launcher"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    l0, _ = _reports(tmp_path)
    assert l0["launcher"]["sharded"]
    assert l0["launcher"]["weights"] == r0["fsdp"]["weights"]


# ---------------------------------------------------------------- one process: settings and errors


class _Acc:
    def __init__(self, n=1):
        self.num_processes = n


def test_fsdp_settings_follow_the_config_and_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_settings(DistillConfig(), _Acc()) is None
    on = fsdp_settings(DistillConfig(fsdp=True, fsdp_shard_teacher=True), _Acc())
    assert on.reshard_after_forward and on.shard_teacher and on.wrap is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer, Qwen2DecoderLayer")
    launched = fsdp_settings(DistillConfig(), _Acc())
    assert not launched.reshard_after_forward and launched.wrap == ("LlamaDecoderLayer", "Qwen2DecoderLayer")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 2"):
        fsdp_settings(DistillConfig(), _Acc())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(fsdp=True, fused_lm_head=True), "fused_lm_head=False with FSDP"),
        (dict(fsdp=True, lora_r=4), "LoRA students are not sharded"),
        (dict(fsdp_shard_teacher=True), "needs FSDP"),
    ],
)
def test_fsdp_combinations_that_cannot_work_are_clear_errors(monkeypatch, kw, match):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    with pytest.raises(ConfigError, match=match):
        fsdp_settings(DistillConfig(**kw), _Acc())


def test_fsdp_without_a_process_group_is_a_clear_error(monkeypatch, tiny_pair, char_tokenizer):
    from odistill import distill

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    student, teacher = tiny_pair
    data = [{"prompt": "1+1=", "answer": "2"}] * 4
    cfg = DistillConfig(fsdp=True, steps=1, batch_size=2, max_new_tokens=2, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="launch with accelerate or torchrun"):
        distill(student, teacher, char_tokenizer, data, cfg)


def test_a_launch_whose_processes_train_alone_is_refused(monkeypatch):
    """`accelerate launch` of a GPU config on a machine without a GPU starts N independent copies."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="use_cpu: true"):
        check_launch(_Acc(1))
    check_launch(_Acc(2))  # a real 2-process job is fine
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launch(_Acc(1))


def test_stop_together_keeps_calling_the_model_and_changes_no_sample(char_tokenizer):
    """While the other processes are not done, the loop keeps running forward passes; the rows that
    ended get pads, so the samples are those of a loop that stopped on its own."""
    model = make_tiny_llama(len(char_tokenizer), seed=0)
    boost = torch.zeros(len(char_tokenizer))
    boost[char_tokenizer.eos_token_id] = 4.0  # every row ends within a few tokens
    model.lm_head.register_forward_hook(lambda m, a, out: out + boost)
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    kw = dict(n=3, max_new_tokens=12, seed=0)
    alone = sample(model, char_tokenizer, ["1+2="], **kw)
    alone_calls = len(calls)
    assert alone.completion_mask.sum(1).max() < 12  # it did stop early on its own
    asked = []

    def others_done_after_ten(mine):
        asked.append(mine)
        return mine and len(asked) >= 10

    calls.clear()
    with stop_together(others_done_after_ten):
        together = sample(model, char_tokenizer, ["1+2="], **kw)
    assert len(calls) > alone_calls
    width = alone.completion_ids.shape[1]
    assert together.completion_ids.shape[1] > width
    assert torch.equal(together.completion_ids[:, :width], alone.completion_ids)
    assert not together.completion_mask[:, width:].any()  # only pads after every row had ended
    assert torch.equal(together.sampling_logprobs.sum(1), alone.sampling_logprobs.sum(1))
    assert together.texts == alone.texts


def test_an_index_keyed_optimizer_state_is_rekeyed_by_name(char_tokenizer):
    student = make_tiny_llama(len(char_tokenizer), seed=0)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    student(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    optimizer.step()
    named = _keyed_by_name(optimizer.state_dict(), student)
    names = [n for n, _ in student.named_parameters()]
    assert named["param_groups"][0]["params"] == names
    assert torch.equal(named["state"][names[3]]["exp_avg"], optimizer.state_dict()["state"][3]["exp_avg"])
    with pytest.raises(ValueError, match="written for another model"):
        _keyed_by_name(optimizer.state_dict(), make_tiny_llama(len(char_tokenizer), seed=0, layers=2))
