"""Model factory and loader: seeded builds, exact save/load round trips, clear errors, shipped checkpoints."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from odistill.bench.models import (
    CHECKPOINT_DIR,
    MODEL_SIZES,
    build_model,
    count_parameters,
    list_shipped,
    load_model,
    read_metadata,
    save_checkpoint,
)
from odistill.bench.tasks import build_char_tokenizer, get_task, list_tasks

TASKS = ["addition", "permutations", "sorting"]


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(get_task("addition").symbols)


def _logits(model, tok, prompts=("023+456=0479", "999+001=1000")):
    batch = tok(list(prompts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_named_sizes_build_llama_models_of_growing_size(tok):
    params = {}
    for size in ("tiny", "small", "medium", "base"):
        model = build_model(size, tokenizer=tok)
        assert isinstance(model, LlamaForCausalLM)
        spec = MODEL_SIZES[size]
        assert (model.config.num_hidden_layers, model.config.hidden_size) == (spec["layers"], spec["hidden"])
        assert model.config.vocab_size == len(tok)
        assert (model.config.pad_token_id, model.config.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
        params[size] = count_parameters(model)
    assert params["tiny"] < params["small"] < params["medium"] < params["base"]
    assert MODEL_SIZES["student"] == MODEL_SIZES["tiny"] and MODEL_SIZES["teacher"] == MODEL_SIZES["base"]
    assert isinstance(build_model("tiny", tokenizer=tok, arch="qwen2"), Qwen2ForCausalLM)


def test_build_is_seeded_and_leaves_global_rng_alone(tok):
    state = torch.random.get_rng_state()
    a, b, c = (build_model("tiny", tokenizer=tok, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_build_errors_are_clear(tok):
    with pytest.raises(ValueError, match="sizes are"):
        build_model("huge", tokenizer=tok)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("tiny")
    with pytest.raises(ValueError, match="missing"):
        build_model({"layers": 1}, vocab_size=10)


def test_save_load_round_trip_is_exact_in_float32(tok, tmp_path):
    model = build_model("small", tokenizer=tok, seed=3)
    save_checkpoint(model, tok, tmp_path, dtype=None, metadata={"note": "hi"})
    loaded, loaded_tok = load_model(tmp_path)
    assert not loaded.training
    assert loaded_tok.get_vocab() == tok.get_vocab() and loaded_tok.padding_side == "left"
    assert torch.equal(_logits(model, tok), _logits(loaded, loaded_tok))  # max difference exactly 0
    assert read_metadata(tmp_path) == {"note": "hi"}


def test_bf16_checkpoint_loads_as_float32_and_leaves_the_model_alone(tok, tmp_path):
    model = build_model("small", tokenizer=tok, seed=3)
    before = _logits(model, tok)
    save_checkpoint(model, tok, tmp_path)  # bf16 by default
    assert next(model.parameters()).dtype == torch.float32 and torch.equal(_logits(model, tok), before)
    loaded, _ = load_model(tmp_path)
    assert next(loaded.parameters()).dtype == torch.float32
    for name, param in model.named_parameters():  # exactly the bf16-rounded weights
        assert torch.equal(loaded.get_parameter(name), param.to(torch.bfloat16).float()), name
    assert (_logits(loaded, tok) - before).abs().max() < 0.1  # and close to the float32 model
    loaded16, _ = load_model(tmp_path, dtype=torch.bfloat16)
    assert next(loaded16.parameters()).dtype == torch.bfloat16


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a shipped checkpoint") as info:
        load_model(tmp_path / "does" / "not" / "exist")
    for name in list_shipped():
        assert name in str(info.value)  # the error lists what *is* available
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)  # a folder, but not a checkpoint
    with pytest.raises(FileNotFoundError):
        load_model("no-such-model")


def test_hub_ids_go_to_the_hub(monkeypatch):
    import odistill.bench.models

    asked = []

    class OfflineHub:  # no network here: stand in for the hub and check the id reaches it unchanged
        @staticmethod
        def from_pretrained(name, **kwargs):
            asked.append(name)
            raise OSError("offline")

    monkeypatch.setattr(odistill.bench.models, "AutoTokenizer", OfflineHub)
    with pytest.raises(FileNotFoundError, match="hub") as info:
        load_model("odistill-test/some-model")
    assert asked == ["odistill-test/some-model"] and "addition-teacher" in str(info.value)


def test_every_task_ships_a_teacher_and_a_student_under_10_mb():
    shipped = list_shipped()
    total = 0
    for task in list_tasks():
        for role in ("teacher", "student"):
            name = f"{task}-{role}"
            assert name in shipped
            size = sum(f.stat().st_size for f in (CHECKPOINT_DIR / name).iterdir())
            assert size <= 10 * 2**20, f"{name} is {size / 2**20:.1f} MB"
            total += size
            meta = read_metadata(name)
            assert meta["task"] == task and meta["role"] == role
    assert total <= 30 * 2**20, f"shipped checkpoints total {total / 2**20:.1f} MB"


@pytest.mark.parametrize("task", TASKS)
def test_shipped_checkpoints_load_in_eval_mode_and_float32(task):
    model, tok = load_model(f"{task}-student")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    assert set(get_task(task).symbols) <= set(tok.get_vocab())
