"""The character tokenizer: one token per character, BOS prepended, left padding, exact save/load."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from odistill.bench.tasks import build_char_tokenizer, get_task
from odistill.bench.tokenizer import SPECIAL_TOKENS

SYMBOLS = "0123456789+="


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(SYMBOLS)


def test_vocabulary_is_specials_then_sorted_symbols(tok):
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("<pad>", "<bos>", "<eos>", "<unk>")] == [0, 1, 2, 3]
    assert len(tok) == 4 + len(SYMBOLS)
    assert sorted(vocab, key=vocab.get)[4:] == sorted(SYMBOLS)
    assert (
        build_char_tokenizer(SYMBOLS[::-1] + "00").get_vocab() == vocab
    )  # order and duplicates don't matter
    assert tok.pad_token_id != tok.eos_token_id
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == tuple(SPECIAL_TOKENS.values())


def test_encoding_prepends_bos_and_maps_unknown_characters(tok):
    ids = tok("023+456=")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 9
    assert tok.convert_ids_to_tokens(ids[1:]) == list("023+456=")
    assert tok("1x")["input_ids"] == [tok.bos_token_id, tok.convert_tokens_to_ids("1"), tok.unk_token_id]
    assert tok("12<eos>", add_special_tokens=False)["input_ids"][-1] == tok.eos_token_id  # one token


def test_left_padding(tok):
    batch = tok(["1+2=", "12+34="], padding=True)
    assert tok.padding_side == "left"
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1, 1, 1, 1]
    assert batch["input_ids"][0][-1] == batch["input_ids"][1][-1]  # prompts end in the same column


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet=SYMBOLS, max_size=30))
def test_decode_inverts_encode(text):
    tok = build_char_tokenizer(SYMBOLS)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == "<bos>" + text


def test_chat_template_matches_plain_prompt_plus_answer(tok):
    messages = [{"role": "user", "content": "023+456="}, {"role": "assistant", "content": "0479"}]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == "<bos>023+456=0479<eos>"
    chat_ids = tok.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert chat_ids == tok("023+456=0479")["input_ids"] + [tok.eos_token_id]


@pytest.mark.parametrize("name", ["addition", "permutations", "sorting"])
def test_save_load_round_trip_is_exact(name, tmp_path):
    task = get_task(name)
    tok = build_char_tokenizer(task.symbols)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.padding_side == "left"
    assert loaded.chat_template == tok.chat_template
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    prompts = list(task.make_dataset(5, seed=0)["prompt"])
    assert loaded(prompts, padding=True)["input_ids"] == tok(prompts, padding=True)["input_ids"]


def test_rejects_empty_or_clashing_symbols():
    with pytest.raises(ValueError, match="empty"):
        build_char_tokenizer("")
    with pytest.raises(ValueError, match="single characters"):
        build_char_tokenizer(["ab", "c"])
