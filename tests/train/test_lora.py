"""LoRA students (PEFT): only the adapters train, checkpoints hold the adapter in PEFT's format, a resumed
run ends with exactly the uninterrupted run's adapters, merging gives a plain model with the same
outputs, and the fused LM-head path refuses an adapter on the LM head."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import make_tiny_llama

from odistill import ConfigError, DistillConfig, distill
from odistill.train.lora import is_peft_model, merge_lora

peft = pytest.importorskip("peft")

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]
pytestmark = pytest.mark.filterwarnings("ignore:step 1.*reached max_new_tokens:RuntimeWarning")


def config(**kw):
    base = dict(
        steps=4, batch_size=4, max_new_tokens=4, lr=1e-2, progress=False, seed=1, lora_r=4, lora_alpha=8.0
    )
    return DistillConfig(**{**base, **kw})


def models(tok):
    return make_tiny_llama(len(tok), seed=0, layers=2), make_tiny_llama(len(tok), seed=1, hidden=48)


def adapter_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_only_the_adapters_train(char_tokenizer):
    student, teacher = models(char_tokenizer)
    base = {k: v.detach().clone() for k, v in student.named_parameters()}
    result = distill(student, teacher, char_tokenizer, DATA, config())
    trained = result.student
    assert is_peft_model(trained)
    lora = adapter_state(trained)
    assert lora and any(
        v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k
    )  # B starts at 0: it moved
    for name, param in trained.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(param, base[key]), name  # the base weights did not move
            assert not param.requires_grad


def test_checkpoint_is_peft_format_and_resume_is_exact(char_tokenizer, tmp_path):
    student, teacher = models(char_tokenizer)
    full = distill(copy.deepcopy(student), teacher, char_tokenizer, DATA, config())

    out = tmp_path / "run"
    half = config(steps=4, save_every=2, output_dir=str(out))
    part = distill(copy.deepcopy(student), teacher, char_tokenizer, DATA, half)
    ckpt = out / "checkpoint-000002"
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert (
        adapter["r"] == 4 and adapter["lora_alpha"] == 8.0 and (ckpt / "adapter_model.safetensors").is_file()
    )
    assert not (ckpt / "model.safetensors").exists()  # the adapter only, not the base weights
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(student), ckpt)  # PEFT reads it on its own
    assert is_peft_model(loaded)

    resumed = distill(copy.deepcopy(student), teacher, char_tokenizer, DATA, half, resume_from=ckpt)
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["loss"] == b["loss"] and a["grad_norm"] == b["grad_norm"], (a, b)
    ours, theirs = adapter_state(full.student), adapter_state(resumed.student)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(torch.equal(v, adapter_state(part.student)[k]) for k, v in ours.items())


def test_merge_gives_a_plain_model_with_the_same_outputs(char_tokenizer):
    student, teacher = models(char_tokenizer)
    trained = distill(student, teacher, char_tokenizer, DATA, config()).student.eval()
    ids = torch.randint(3, len(char_tokenizer), (2, 6))
    with torch.no_grad():
        before = trained(ids).logits
        merged = merge_lora(trained)
        after = merged(ids).logits
    assert not is_peft_model(merged) and not any("lora_" in k for k, _ in merged.named_parameters())
    assert torch.allclose(before, after, atol=1e-5)


def test_lora_errors_are_clear(char_tokenizer):
    student, teacher = models(char_tokenizer)
    with pytest.raises(ConfigError, match="cannot use a LoRA adapter on it"):
        config(fused_lm_head=True, lora_target_modules="q_proj,lm_head").validate()
    with pytest.raises(ConfigError, match="LoRA could not wrap"):
        distill(
            copy.deepcopy(student), teacher, char_tokenizer, DATA, config(lora_target_modules="no_such_layer")
        )
    wrapped = peft.get_peft_model(copy.deepcopy(student), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="already a PEFT model"):
        distill(wrapped, teacher, char_tokenizer, DATA, config())
    with pytest.raises(ConfigError, match="lora_dropout"):
        config(lora_dropout=1.0).validate()


def test_fused_lm_head_trains_a_lora_student(char_tokenizer):
    """The adapters sit on the layers, not on the head: the fused loss gives the logits path's numbers."""
    student, teacher = models(char_tokenizer)
    a = distill(copy.deepcopy(student), teacher, char_tokenizer, DATA, config(steps=2))
    b = distill(copy.deepcopy(student), teacher, char_tokenizer, DATA, config(steps=2, fused_lm_head=True))
    for x, y in zip(a.history, b.history, strict=True):
        assert abs(x["loss"] - y["loss"]) <= 1e-5


def test_a_user_wrapped_peft_student_trains_its_own_adapters(char_tokenizer, tmp_path):
    student, teacher = models(char_tokenizer)
    wrapped = peft.get_peft_model(student, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / "run"
    cfg = config(lora_r=0, steps=2, save_every=2, output_dir=str(out))
    result = distill(wrapped, teacher, char_tokenizer, DATA, cfg)
    assert (out / "checkpoint-000002" / "adapter_config.json").is_file() and is_peft_model(result.student)
