"""The GPT itself: causality, KV cache, padding, generate, save/load, sequence classification."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationMixin,
)

from base_model import GPTConfig, GPTForCausalLM, GPTForSequenceClassification, GPTModel, train_tokenizer
from base_model.hf import CACHE_FIELD

V, PAD, EOS = 300, 0, 5
ATOL = 1e-5


def tiny_config(**kw):
    base = dict(
        vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS,
    )
    return GPTConfig(**{**base, **kw})


@pytest.fixture
def lm():
    torch.manual_seed(0)
    model = GPTForCausalLM(tiny_config()).eval()
    with torch.no_grad():  # a fresh init is nearly uniform; sharpen it so argmax decisions are not ties
        model.model.embed_tokens.weight.mul_(20)
    return model


def ids(*shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(6, V, shape, generator=g)


@torch.no_grad()
def test_causality(lm):
    x = ids(2, 12)
    y = x.clone()
    y[:, 7:] = ids(2, 5, seed=2)
    a, b = lm(x).logits, lm(y).logits
    assert torch.allclose(a[:, :7], b[:, :7], atol=ATOL)
    assert (a[:, 7:] - b[:, 7:]).abs().max() > 1e-3  # the change does reach later positions


@torch.no_grad()
@pytest.mark.parametrize("chunks", [[1] * 10, [4, 1, 3, 2], [6, 4]])
def test_kv_cache_matches_full_recompute(lm, chunks):
    x = ids(2, sum(chunks))
    full = lm(x, use_cache=False).logits
    cache, start, pieces = None, 0, []
    for n in chunks:
        out = lm(x[:, start : start + n], cache=cache, use_cache=True)
        cache, start = out.get(CACHE_FIELD), start + n
        pieces.append(out.logits)
    assert cache.get_seq_length() == x.shape[1]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_kv_cache_with_left_padding(lm):
    x = ids(2, 9)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    x[0, :3] = PAD
    full = lm(x, attention_mask=mask, use_cache=False).logits
    out = lm(x[:, :5], attention_mask=mask[:, :5], use_cache=True)
    rest = lm(x[:, 5:], attention_mask=mask, past_key_values=out.get(CACHE_FIELD), use_cache=True).logits
    torch.testing.assert_close(torch.cat([out.logits, rest], 1)[mask.bool()], full[mask.bool()], atol=ATOL, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("generate", [GPTForCausalLM.generate, GenerationMixin.generate], ids=["fast", "transformers"])
def test_left_padded_batch_equals_rows_alone(lm, generate):
    rows = [ids(1, 9, seed=3)[0], ids(1, 5, seed=4)[0], ids(1, 2, seed=5)[0]]
    T = max(len(r) for r in rows)
    x = torch.full((len(rows), T), PAD)
    mask = torch.zeros_like(x)
    for i, r in enumerate(rows):
        x[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    batch = lm(x, attention_mask=mask).logits
    gen = generate(lm, x, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=PAD)
    for i, r in enumerate(rows):
        alone = lm(r[None]).logits[0]
        torch.testing.assert_close(batch[i, T - len(r) :], alone, atol=ATOL, rtol=0)
        gen_alone = generate(lm, r[None], max_new_tokens=8, do_sample=False, pad_token_id=PAD)[0]
        assert gen[i, T:].tolist() == gen_alone[len(r) :].tolist()


@torch.no_grad()
def test_generate_with_and_without_cache_agree(lm):
    x = ids(2, 6)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=PAD, eos_token_id=None)
    a = lm.generate(x, use_cache=True, **kw)  # the lab's sampler (plain greedy decoding)
    b = lm.generate(x, use_cache=False, **kw)  # transformers' generate, recomputing everything each step
    assert GenerationMixin.generate(lm, x, use_cache=True, **kw).tolist() == a.tolist()  # transformers + our cache
    assert a.shape == (2, 18)
    assert a.tolist() == b.tolist()
    assert len(set(a[:, 6:].flatten().tolist())) > 1  # not a degenerate constant output


def test_ignoring_the_cache_would_be_caught(lm):
    """The cache test is able to fail: decoding 1 token without its cache gives other logits."""
    x = ids(1, 6)
    with torch.no_grad():
        full = lm(x).logits[:, -1]
        no_cache = lm(x[:, -1:]).logits[:, -1]
    assert (full - no_cache).abs().max() > 1e-2


def test_loss_ignores_minus_100_and_hidden_states(lm):
    x = ids(2, 8)
    labels = x.clone()
    labels[:, :4] = -100
    out = lm(x, labels=labels, output_hidden_states=True)
    logits = out.logits[:, :-1].reshape(-1, V)
    ref = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], lm.model(x).last_hidden_state)


def test_init_and_tied_head():
    torch.manual_seed(0)
    cfg = tiny_config(hidden_size=128, num_hidden_layers=8, initializer_range=0.02)
    m = GPTForCausalLM(cfg)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert not any("bias" in n for n, _ in m.named_parameters())
    layer = m.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - 0.02) < 0.002
    assert abs(layer.self_attn.o_proj.weight.std().item() - 0.02 / 4) < 0.001  # 1/sqrt(2*8)
    assert abs(layer.mlp.down_proj.weight.std().item() - 0.02 / 4) < 0.001
    assert torch.all(layer.input_layernorm.weight == 1)


def test_gradient_checkpointing_really_recomputes(lm):
    lm.train()
    calls = []
    # a pre-hook: torch's non-reentrant recompute stops as soon as it has what backward needs
    lm.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    x = ids(2, 8)
    lm(x, labels=x).loss.backward()
    assert len(calls) == 1
    grads = {n: p.grad.clone() for n, p in lm.named_parameters()}
    lm.zero_grad()
    lm.activation_checkpointing_enable()  # what gradient_checkpointing_enable calls in transformers 5.23
    assert lm.model.gradient_checkpointing is True
    calls.clear()
    lm(x, labels=x).loss.backward()
    assert len(calls) == 2  # forward once, again in backward
    for n, p in lm.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-6, rtol=1e-4)


def test_save_load_round_trip(lm, tmp_path):
    tok = train_tokenizer(["hello world, the cat sat on the mat. 1 + 2 = 3"] * 50, 300)
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    x = ids(2, 10)
    with torch.no_grad():
        ref = lm(x).logits
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert type(loaded) is GPTForCausalLM
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        torch.testing.assert_close(loaded(x).logits, ref, atol=0, rtol=0)
        backbone = AutoModel.from_pretrained(tmp_path).eval()
        assert type(backbone) is GPTModel
        torch.testing.assert_close(backbone(x).last_hidden_state, lm.model(x).last_hidden_state, atol=0, rtol=0)

        clf = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=1).eval()
        assert type(clf) is GPTForSequenceClassification
        torch.testing.assert_close(clf.model(x).last_hidden_state, lm.model(x).last_hidden_state, atol=0, rtol=0)
        clf.save_pretrained(tmp_path / "clf")
        clf2 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "clf").eval()
        torch.testing.assert_close(clf2(x).logits, clf(x).logits, atol=0, rtol=0)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2("the cat").input_ids == tok("the cat").input_ids
    assert tok2.chat_template == tok.chat_template


@torch.no_grad()
def test_sequence_classification_pools_last_real_token():
    torch.manual_seed(0)
    clf = GPTForSequenceClassification(tiny_config(num_labels=1)).eval()
    a, b = ids(1, 7, seed=6)[0], ids(1, 4, seed=7)[0]
    alone = torch.cat([clf(r[None]).logits for r in (a, b)])  # (2, 1)
    left = torch.full((2, 7), PAD)
    right = torch.full((2, 7), PAD)
    left[0], right[0] = a, a
    left[1, 3:], right[1, :4] = b, b
    lmask, rmask = (left != PAD).long(), (right != PAD).long()
    out_left = clf(left, attention_mask=lmask).logits
    out_right = clf(right, attention_mask=rmask).logits
    out_ids_only = clf(right).logits  # no mask: pads found through pad_token_id
    assert out_left.shape == (2, 1)
    for out in (out_left, out_right, out_ids_only):
        torch.testing.assert_close(out, alone, atol=ATOL, rtol=0)
    # reading the last column instead would be a different number for the padded row
    assert (clf.score(clf.model(right, attention_mask=rmask).last_hidden_state)[1, -1] - alone[1]).abs() > 1e-4
