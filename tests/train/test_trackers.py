"""Experiment tracking through accelerate's trackers: TensorBoard event files under output_dir, read back
with TensorBoard's own reader, hold every step's scalars, the config and the sample tables."""

from __future__ import annotations

import math

import pytest
from conftest import make_tiny_llama

from odistill import ConfigError, DistillConfig, distill
from odistill.train.loggers import LOGGERS, TrackerLogger, samples_markdown

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

DATA = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(20) for b in range(20)]


def read_events(folder):
    files = list(folder.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {folder}"
    scalars, texts = {}, {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["tensors"]:
            texts.setdefault(tag, {}).update(
                {
                    e.step: e.tensor_proto.string_val[0].decode()
                    for e in acc.Tensors(tag)
                    if e.tensor_proto.string_val
                }
            )
    return scalars, texts


@pytest.mark.filterwarnings("ignore:step 1.*reached max_new_tokens:RuntimeWarning")
def test_tensorboard_event_files_hold_the_history(char_tokenizer, tmp_path):
    student = make_tiny_llama(len(char_tokenizer), seed=0)
    teacher = make_tiny_llama(len(char_tokenizer), seed=1, hidden=48)
    config = DistillConfig(
        steps=4, batch_size=4, max_new_tokens=4, progress=False, output_dir=str(tmp_path),
        report_to=("tensorboard",), log_samples_every=2,
    )  # fmt: skip
    result = distill(student, teacher, char_tokenizer, DATA, config)
    scalars, texts = read_events(tmp_path / "tensorboard")
    rows = [r for r in result.history if "loss" in r]
    for key in ("loss", "reverse_kl", "grad_norm", "lr", "tokens"):
        assert sorted(scalars[key]) == [r["step"] for r in rows], key
        for r in rows:
            assert math.isclose(scalars[key][r["step"]], r[key], rel_tol=1e-6, abs_tol=1e-7), (key, r["step"])
    samples = [r for r in rows if "samples" in r]
    assert [r["step"] for r in samples] == [2, 4]
    for r in samples:
        assert len(r["samples"]) == 4 and all(len(s["token_reverse_kl"]) >= 1 for s in r["samples"])
        s = r["samples"][0]
        assert math.isclose(
            s["reverse_kl"], sum(s["token_reverse_kl"]) / len(s["token_reverse_kl"]), abs_tol=1e-4
        )
    table = next(v for tag, v in texts.items() if tag.startswith("samples"))
    assert sorted(table) == [2, 4] and "| prompt | completion | reverse KL / token |" in table[2]
    assert (
        any(tag.startswith("_hparams_") for tag in list(scalars) + list(texts))
        or (tmp_path / "tensorboard").exists()
    )


def test_tensorboard_needs_an_output_dir():
    with pytest.raises(ConfigError, match="tensorboard"):
        DistillConfig(report_to=("tensorboard",)).validate()


def test_a_missing_tracker_package_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ImportError, match="pip install wandb"):
        LOGGERS["wandb"]().start(DistillConfig(output_dir=str(tmp_path)), 1)
    assert isinstance(LOGGERS["trackio"](), TrackerLogger)


def test_samples_markdown_escapes_the_table():
    md = samples_markdown([{"prompt": "a|b", "completion": "c", "reverse_kl": 0.25}])
    assert "a\\|b" in md and md.count("\n") == 2 and "0.2500" in md
