"""The byte-level BPE tokenizer and the chat template."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import random

import pytest
from transformers import AutoTokenizer

from base_model import load_tokenizer, train_tokenizer
from base_model.tokenizer import SPECIAL_TOKENS

_rng = random.Random(42)
WORDS = "the cat dog sat ran in on garden park happy sad story what is plus and a tell me short".split() + [
    "".join(_rng.choice("bcdfghklmnprstvz") + _rng.choice("aeiou") for _ in range(_rng.randint(1, 4)))
    for _ in range(2000)
]


def corpus(n_chars: int, seed: int = 0):
    rng = random.Random(seed)
    texts, size = [], 0
    while size < n_chars:
        t = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + f". {rng.randint(0, 99)} + 7?"
        texts.append(t)
        size += len(t)
    return texts


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus(50_000), 400)


def test_training_fills_the_vocab():
    t = train_tokenizer(corpus(300_000, seed=1), 512)
    assert len(t) == 512  # a varied corpus fills the vocab (a tiny one may stop short: use len(tokenizer))


@pytest.mark.parametrize(
    "text",
    ["the cat sat", "  leading and trailing  ", "日本語のテキスト", "emoji 🙂👍🏽 mix", "tabs\tand\nnew\r\nlines",
     "Ünïcödé ñ ß ø", "zero\u200bwidth", "\x00\x01 control", ""],
)
def test_round_trip_any_unicode(tok, text):
    assert tok.decode(tok(text).input_ids) == text


def test_special_tokens_are_single_ids(tok):
    ids = [tok.convert_tokens_to_ids(s) for s in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    for s, i in zip(SPECIAL_TOKENS, ids):
        assert tok(f"a{s}b").input_ids == tok("a").input_ids + [i] + tok("b").input_ids
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|endoftext|>", "<|end|>")
    assert tok.padding_side == "left"
    assert tok("the cat").input_ids[0] != tok.bos_token_id  # no bos added implicitly


def test_chat_template_renders_turns(tok):
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


def test_assistant_mask_is_exactly_assistant_content_and_end(tok):
    msgs = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "It is 19."},
        {"role": "user", "content": "Thanks 🙂"},
        {"role": "assistant", "content": " You are welcome!\n"},
    ]
    out = tok.apply_chat_template(msgs, return_assistant_tokens_mask=True, return_dict=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    end = tok.eos_token_id
    # the masked tokens are, in order, each assistant content followed by <|end|>
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    assert cur == []  # the trailing "\n" after the last <|end|> is not trained on
    assert len(spans) == 2
    for span, content in zip(spans, ["It is 19.", " You are welcome!\n"]):
        assert span[-1] == end
        assert tok.decode(span[:-1]) == content
    # and nothing else is masked: the unmasked tokens decode to the template without the assistant parts
    rest = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert rest == (
        "<|system|>\nBe kind.<|end|>\n<|user|>\nWhat is 12 + 7?<|end|>\n<|assistant|>\n\n"
        "<|user|>\nThanks 🙂<|end|>\n<|assistant|>\n\n"
    )


def test_save_and_reload(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    for t in (load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert t("héllo the cat 🙂").input_ids == tok("héllo the cat 🙂").input_ids
        assert t.chat_template == tok.chat_template
        assert (t.pad_token_id, t.bos_token_id, t.eos_token_id) == (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        assert t.padding_side == "left"
        batch = t(["a", "the cat sat"], padding=True)
        assert batch.input_ids[0][0] == t.pad_token_id  # left padding
