"""The "vllm" sampling backend, without vLLM: a clear error here, and the backend's glue (prompts without
their padding, completions and log-probs back in Rollouts, the weight sync after each optimizer step)
against a stand-in engine that implements the part of vLLM's API the backend uses (``LLM``,
``SamplingParams``, ``RequestOutput``, ``apply_model``). The stand-in samples from the Hugging Face
model it loaded, so the log-probs it returns are checked against the student's own forward pass."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from conftest import make_tiny_llama

from odistill import DistillConfig, distill
from odistill.core.forward import completion_logits
from odistill.core.sampler import BACKENDS, sample
from odistill.core.vllm_sampler import VLLMBackend, VLLMUnavailableError, check_vllm_available
from odistill.train.config import ConfigError

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]


def _vllm_installed() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_vllm_installed(), reason="vLLM is installed here")
def test_without_vllm_the_backend_is_a_clear_error(tiny_pair, char_tokenizer):
    with pytest.raises(VLLMUnavailableError, match=r"pip install 'odistill\[vllm\]'"):
        check_vllm_available()
    student, teacher = tiny_pair
    cfg = DistillConfig(sampler_backend="vllm", steps=1, batch_size=2, device="cpu", progress=False)
    with pytest.raises(VLLMUnavailableError, match="not installed"):
        distill(student, teacher, char_tokenizer, DATA, cfg)


# ----------------------------------------------------------------- a stand-in for vLLM's offline API


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Completion:
    token_ids: list
    logprobs: list | None


@dataclass
class _RequestOutput:
    outputs: list


@dataclass
class _SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    logprobs: int | None = None
    stop_token_ids: list = field(default_factory=list)
    seed: int | None = None
    detokenize: bool = True


class _EngineModel:
    def __init__(self, model):
        self.model = model

    def load_weights(self, weights):
        self.model.load_state_dict(dict(weights))
        return {name for name, _ in weights}


def _fake_vllm(processed: bool = True):
    """A ``vllm`` module whose ``LLM`` samples from the Hugging Face model in the folder it is given."""
    log = {"engines": [], "prompts": [], "syncs": 0, "weights_at_generate": []}

    class LLM:
        def __init__(self, model, **kw):
            if "logprobs_mode" in kw and not processed:
                raise TypeError("unexpected keyword argument 'logprobs_mode'")
            from transformers import AutoModelForCausalLM

            self.kw = kw
            self.engine_model = _EngineModel(AutoModelForCausalLM.from_pretrained(model).eval())
            log["engines"].append(self)

        def apply_model(self, fn):
            log["syncs"] += 1
            return fn(self.engine_model)

        def generate(self, prompts, params, use_tqdm=True):
            model = self.engine_model.model
            log["weights_at_generate"].append(sum(float(p.double().sum()) for p in model.parameters()))
            outs = []
            for prompt, p in zip(prompts, params, strict=True):
                ids = list(prompt["prompt_token_ids"])
                log["prompts"].append(ids)
                gen = torch.Generator().manual_seed(p.seed)
                tokens, logprobs = [], []
                for _ in range(p.max_tokens):
                    with torch.no_grad():
                        logits = model(torch.tensor([ids + tokens])).logits[0, -1].double()
                    lp = torch.log_softmax(logits / max(p.temperature, 1e-9), -1)
                    token = (
                        int(lp.argmax())
                        if p.temperature == 0
                        else int(torch.multinomial(lp.exp(), 1, generator=gen))
                    )
                    tokens.append(token)
                    logprobs.append({token: _Logprob(float(lp[token]))})
                    if token in p.stop_token_ids:
                        break
                outs.append(
                    _RequestOutput([_Completion(tokens, logprobs if p.logprobs is not None else None)])
                )
            return outs

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = LLM, _SamplingParams
    return module, log


@pytest.fixture()
def fake_vllm(monkeypatch):
    def install(processed=True):
        module, log = _fake_vllm(processed)
        monkeypatch.setitem(sys.modules, "vllm", module)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setitem(BACKENDS, "vllm", VLLMBackend())  # a fresh engine cache per test
        return log

    return install


def test_without_a_gpu_the_backend_is_a_clear_error(fake_vllm, monkeypatch):
    fake_vllm()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(VLLMUnavailableError, match="torch sees none"):
        check_vllm_available()


def test_vllm_samples_carry_the_students_own_log_probs(fake_vllm, char_tokenizer):
    """Prompts reach the engine without their left padding, and each sampled token's recorded log q is
    the student's log-prob of it in a forward pass over the padded batch: the importance ratio is 1."""
    log = fake_vllm()
    student = make_tiny_llama(len(char_tokenizer), seed=0)
    prompts = ["1+2=", "10+20=", "3+4="]  # different lengths: the batch is left-padded
    rollouts = sample(student, char_tokenizer, prompts, n=2, max_new_tokens=6, seed=7, backend="vllm")
    engine = log["engines"][0]
    assert engine.kw["skip_tokenizer_init"] and engine.kw["logprobs_mode"] == "processed_logprobs"
    expected = [char_tokenizer(p)["input_ids"] for p in prompts for _ in range(2)]
    assert log["prompts"] == expected  # no pad token reached the engine
    assert rollouts.completion_mask.any(1).all() and len(rollouts) == 6
    with torch.no_grad():
        lp = torch.log_softmax(completion_logits(student, rollouts).double(), -1)
    own = lp.gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = rollouts.completion_mask
    assert torch.allclose(rollouts.sampling_logprobs.double()[mask], own[mask], atol=1e-5)
    again = sample(student, char_tokenizer, prompts, n=2, max_new_tokens=6, seed=7, backend="vllm")
    assert again.texts == rollouts.texts  # seeded: reproducible
    greedy = sample(student, char_tokenizer, prompts, max_new_tokens=6, temperature=0, backend="vllm")
    assert float(greedy.sampling_logprobs.abs().sum()) == 0.0  # a point mass


def test_the_engine_gets_the_weights_of_every_step(fake_vllm, char_tokenizer):
    """Each optimizer step's weights are in the engine before the next sample (synced once per step)."""
    log = fake_vllm()
    student = make_tiny_llama(len(char_tokenizer), seed=0)
    teacher = make_tiny_llama(len(char_tokenizer), seed=1, hidden=48)
    after_step = [sum(float(p.detach().double().sum()) for p in student.parameters())]

    def record(row):
        after_step.append(sum(float(p.detach().double().sum()) for p in student.parameters()))

    cfg = DistillConfig(
        sampler_backend="vllm", lmbda=1.0, steps=3, batch_size=2, max_new_tokens=4, lr=1e-2,
        device="cpu", progress=False,
    )  # fmt: skip
    distill(student, teacher, char_tokenizer, DATA, cfg, callback=record)
    assert len(log["engines"]) == 1 and log["syncs"] == 2
    assert len(log["weights_at_generate"]) == 3
    assert log["weights_at_generate"] == pytest.approx(after_step[:3], rel=0, abs=1e-9)
    assert len(set(after_step)) == 4  # the weights did change every step


def test_an_old_vllm_refuses_what_its_log_probs_cannot_say(fake_vllm, char_tokenizer):
    fake_vllm(processed=False)
    student = make_tiny_llama(len(char_tokenizer), seed=0)
    with pytest.raises(VLLMUnavailableError, match="raw model's log-probs"):
        sample(student, char_tokenizer, ["1+2="], max_new_tokens=3, temperature=0.7, seed=0, backend="vllm")
    fine = sample(
        student, char_tokenizer, ["1+2="], max_new_tokens=3, temperature=1.0, seed=0, backend="vllm"
    )
    assert len(fine) == 1


@pytest.mark.parametrize(
    "kw, match",
    [(dict(lora_r=4), "LoRA student"), (dict(fsdp=True), "use sampler_backend='hf' with FSDP")],
)
def test_vllm_with_what_it_cannot_sync_is_a_clear_error(fake_vllm, tiny_pair, char_tokenizer, kw, match):
    fake_vllm()
    student, teacher = tiny_pair
    cfg = DistillConfig(sampler_backend="vllm", steps=1, batch_size=2, device="cpu", progress=False, **kw)
    with pytest.raises(ConfigError, match=match):
        distill(student, teacher, char_tokenizer, DATA, cfg)
