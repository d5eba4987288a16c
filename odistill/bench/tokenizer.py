"""A character-level tokenizer, built locally (no download), that behaves like any Hugging Face tokenizer.

Every character of a task is one token. The vocabulary is four special tokens followed by the task's
symbols in sorted order::

    <pad>=0  <bos>=1  <eos>=2  <unk>=3  then one id per symbol

Conventions used everywhere in odistill's lab bench:

* ``tokenizer("023+456=")`` gives ``<bos> 0 2 3 + 4 5 6 =``: the post-processor prepends BOS, the prompt
  is plain text, and the model's completion is the answer followed by ``<eos>``.
* Padding is on the **left** (so a batch of prompts ends at the same column and generation continues from
  there), and the pad token is distinct from EOS (so "finished" and "padding" never get confused).
* A small Jinja chat template renders ``[{user: prompt}, {assistant: answer}]`` to exactly the same tokens
  as ``prompt + answer + <eos>``, so chat-style (TRL) data and plain prompts agree.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "CHAT_TEMPLATE", "build_char_tokenizer"]

#: The special tokens, in vocabulary order (their ids are 0, 1, 2, 3).
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}

#: User (and system) turns are written as they are; an assistant turn is followed by EOS. BOS comes first.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}{% endif %}"
    "{% endfor %}"
)


def build_char_tokenizer(symbols: str | list[str], *, model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """Build a character-level ``PreTrainedTokenizerFast`` over ``symbols`` plus ``<pad> <bos> <eos> <unk>``.

    Characters outside ``symbols`` become ``<unk>``. The vocabulary is deterministic (sorted symbols), so
    two tokenizers built from the same symbols are identical, whatever order the symbols came in.

    Args:
        symbols: the characters the task uses, e.g. ``"0123456789+="`` (duplicates are ignored).
        model_max_length: the longest sequence the model is meant to see (prompt + completion).

    Example:
        >>> tok = build_char_tokenizer("0123456789+=")
        >>> tok("12+3=")["input_ids"]  # <bos> 1 2 + 3 =   ('+' < '0' < '=' in sorted order)
        [1, 6, 7, 4, 8, 15]
        >>> tok.decode([6, 7, 2], skip_special_tokens=True)
        '12'
    """
    chars = sorted(set(symbols))
    if not chars:
        raise ValueError("symbols is empty: pass the characters your task uses, e.g. '0123456789+='")
    specials = list(SPECIAL_TOKENS.values())
    clashes = [c for c in chars if c in specials or len(c) != 1]
    if clashes:
        raise ValueError(f"symbols must be single characters other than the special tokens, got {clashes}")

    vocab = {token: i for i, token in enumerate(specials + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    bos = SPECIAL_TOKENS["bos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    backend.add_special_tokens(specials)  # so "<eos>" in a text is one token, not five characters

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        padding_side="left",
        truncation_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        **SPECIAL_TOKENS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
