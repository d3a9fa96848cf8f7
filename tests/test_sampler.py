"""The fast sampler against transformers' `generate`: same greedy tokens, same sampled distribution."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin

from base_model import GPTConfig, GPTForCausalLM, sampler, train_tokenizer
from base_model.sampler import fast_path_ok, sample
from recipes.core.generation import generate_answers

V, PAD, EOS = 300, 0, 5


def tiny_lm(seed=0, sharpness=30.0, **kw):
    """A random GPT whose blocks matter (greedy text is not one repeated token) and whose logits are
    sharp enough (`sharpness` scales the final norm) that argmax decisions are not near-ties."""
    torch.manual_seed(seed)
    base = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=128, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS)
    model = GPTForCausalLM(GPTConfig(**{**base, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # norm weights away from 1, so folding them into matmuls is checked
            if any(key in name for key in ("o_proj", "up_proj", "down_proj")):
                p.mul_(10)  # a fresh init barely moves the residual stream: the tied head then repeats the input
        model.model.norm.weight.mul_(sharpness)
    return model


def hf_generate(model):
    """transformers' own generate, bypassing GPTForCausalLM.generate's route to the fast sampler."""
    return lambda *args, **kw: GenerationMixin.generate(model, *args, **kw)


def left_padded(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(6, V, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask


@pytest.mark.parametrize("kv_heads, lengths", [
    (2, [3, 9, 1, 6]), (4, [3, 9, 1, 6]),
    (2, [1 + (i * 5) % 11 for i in range(20)]),  # a batch large enough for the sampler's bmm attention
])
def test_greedy_tokens_equal_generate_on_left_padded_batches(kv_heads, lengths):
    model = tiny_lm(num_key_value_heads=kv_heads)
    ids, mask = left_padded(lengths)
    ours = sample(model, ids, mask, max_new_tokens=24, eos_token_id=None, pad_token_id=PAD)
    ref = hf_generate(model)(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                         eos_token_id=None, pad_token_id=PAD)
    assert ours.tolist() == ref.tolist()
    n, width = lengths[0], max(lengths)
    one = sample(model, ids[:1, -n:], None, max_new_tokens=24, pad_token_id=PAD)  # no padding, no mask
    assert one[0, n:].tolist() == ours[0, width:].tolist()  # left padding changes nothing for the row


def test_greedy_stops_at_eos_like_generate():
    model = tiny_lm()
    ids, mask = left_padded([4, 7, 2, 5, 3, 6], seed=3)
    greedy = dict(input_ids=ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=PAD)
    free = hf_generate(model)(**greedy, eos_token_id=None)[:, ids.shape[1]:]
    # The end token: one that some rows produce and others never do, so both cases occur.
    rows_with = [(free == t).any(-1).sum().item() for t in range(V)]
    eos = max(range(V), key=lambda t: rows_with[t] if rows_with[t] < len(free) else -1)
    assert 0 < rows_with[eos] < len(free)
    ref = hf_generate(model)(**greedy, eos_token_id=eos)
    ours = sample(model, ids, mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=PAD)
    assert ours.tolist() == ref.tolist()  # same tokens, pads after each end, same length
    new = ours[:, ids.shape[1]:]
    for row, ended in zip(new.tolist(), (free == eos).any(-1).tolist()):
        if ended:
            assert set(row[row.index(eos) + 1:]) <= {PAD}
    assert sample(model, ids, mask, max_new_tokens=30, eos_token_id=[eos, 7], pad_token_id=PAD).shape[0] == len(ids)


def test_finished_rows_leave_the_batch_without_changing_any_row(monkeypatch):
    model = tiny_lm()
    ids, mask = left_padded([1 + (i * 7) % 13 for i in range(24)], seed=5)  # bmm attention, mixed padding
    greedy = dict(input_ids=ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=PAD)
    free = hf_generate(model)(**greedy, eos_token_id=None)[:, ids.shape[1]:]
    # An end token a quarter of the rows or more produce, not all: the batch shrinks, some rows run on.
    rows_with = [(free == t).any(-1).sum().item() for t in range(V)]
    eos = max(range(V), key=lambda t: rows_with[t] if rows_with[t] < len(free) else -1)
    assert len(free) // 4 <= rows_with[eos] < len(free)
    kept = []
    original = sampler.KVCache.keep_rows
    monkeypatch.setattr(sampler.KVCache, "keep_rows", lambda self, rows: (kept.append(len(rows)), original(self, rows)))
    ref = hf_generate(model)(**greedy, eos_token_id=eos)
    assert sample(model, ids, mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=PAD).tolist() == ref.tolist()
    assert kept and kept == sorted(kept, reverse=True) and kept[-1] < len(ids)
    # The sampling path compacts the same way: top-k 1 sampling is greedy.
    top1 = sample(model, ids, mask, max_new_tokens=30, eos_token_id=eos, pad_token_id=PAD, do_sample=True, top_k=1)
    assert top1.tolist() == ref.tolist()


def first_token_counts(generate, n, **sampling):
    """Counts of the first sampled token over n draws of one prompt (in one batch, rows independent)."""
    ids = torch.tensor([[7, 8, 9, 10]]).repeat(n, 1)
    out = generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=True,
                   eos_token_id=None, pad_token_id=PAD, **sampling)
    return torch.bincount(out[:, -1], minlength=V).double()


SAMPLING = [dict(temperature=1.0, top_k=0, top_p=1.0), dict(temperature=0.7, top_k=20, top_p=1.0),
            dict(temperature=1.3, top_k=0, top_p=0.8)]


@pytest.mark.parametrize("sampling", SAMPLING)
def test_sampled_distribution_matches_generate_and_the_model(sampling):
    model = tiny_lm(sharpness=3.0)  # spread-out next-token distribution: many tokens with real mass
    n = 4000
    torch.manual_seed(11)
    ours = first_token_counts(lambda **kw: sample(model, **kw), n, **sampling)
    torch.manual_seed(12)
    ref = first_token_counts(hf_generate(model), n, **sampling)
    tv = 0.5 * (ours / n - ref / n).abs().sum().item()
    # Two independent samples of 4000 from the same distribution over <=300 tokens: TV is ~0.1 at
    # most here; a wrong temperature or a cut-off in the wrong place moves it far beyond 0.15.
    assert tv < 0.15, tv
    # Exact support: top-k keeps k tokens, top-p keeps the smallest set reaching p.
    with torch.no_grad():
        logits = model(torch.tensor([[7, 8, 9, 10]])).logits[0, -1].double() / sampling["temperature"]
    probs = logits.softmax(-1)
    allowed = torch.ones(V, dtype=torch.bool)
    if sampling["top_k"]:
        allowed &= logits >= logits.topk(sampling["top_k"]).values[-1]
    if sampling["top_p"] < 1:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < sampling["top_p"]  # tokens before reaching p, plus the one crossing it
        allowed &= torch.zeros(V, dtype=torch.bool).scatter(0, order, keep)
    assert ours[~allowed].sum() == 0 and ref[~allowed].sum() == 0
    if not allowed.all():
        assert allowed.sum() < V  # the restriction is real
    # Goodness of fit against the model's own restricted distribution: Pearson's chi-square (bins
    # expecting < 5 draws pooled) within 5 standard deviations of its mean, for both samplers.
    expected = torch.where(allowed, probs, 0.0)
    expected = expected / expected.sum() * n
    for counts in (ours, ref):
        big = expected >= 5
        obs = torch.cat([counts[big], counts[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        obs, exp = obs[exp > 0], exp[exp > 0]
        chi2, df = ((obs - exp) ** 2 / exp).sum().item(), len(exp) - 1
        assert chi2 < df + 5 * (2 * df) ** 0.5, (chi2, df)


def test_seeded_sampling_is_reproducible_and_leaves_the_rng_alone():
    model = tiny_lm(sharpness=3.0)
    ids, mask = left_padded([5, 2, 8])
    torch.manual_seed(0)
    a = sample(model, ids, mask, max_new_tokens=12, do_sample=True, temperature=1.0)
    torch.manual_seed(0)
    b = sample(model, ids, mask, max_new_tokens=12, do_sample=True, temperature=1.0)
    assert a.tolist() == b.tolist()


@pytest.fixture(scope="module")
def chat_tokenizer():
    return train_tokenizer(["the cat sat on the mat in the garden. 12 + 7 = 19. hello, thanks!"] * 40, V)


def test_generate_answers_fast_path_equals_generate(chat_tokenizer):
    """generate_answers through the sampler gives the Answers that the generate path gave."""
    tok = chat_tokenizer
    prompts = ["hello", "what is 12 + 7?", [{"role": "user", "content": "the cat"}], "thanks!", "mat", "12", "cat"]
    for boost in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0):  # make the end of turn likely enough that some answers end
        model = tiny_lm()
        with torch.no_grad():
            model.lm_head.weight[tok.eos_token_id] *= boost
        fast = generate_answers(model, tok, prompts, max_new_tokens=16, batch_size=3)
        if any(a.ended for a in fast) and not all(a.ended for a in fast):
            break
    assert fast_path_ok(model)

    class Plain(torch.nn.Module):  # the same model seen as a foreign one: generate_answers falls back to generate
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.generate = hf_generate(inner)
            self.device = inner.device

    plain = Plain(model)
    assert not fast_path_ok(plain)
    ref = generate_answers(plain, tok, prompts, max_new_tokens=16, batch_size=3)
    assert fast == ref
    assert any(a.ended for a in fast) and not all(a.ended for a in fast)
    for a in fast:
        assert a.num_tokens == len(a.token_ids) and (a.token_ids[-1] == tok.eos_token_id) == a.ended
        assert a.ended or a.num_tokens == 16
    state = torch.random.get_rng_state()
    again = generate_answers(model, tok, prompts, max_new_tokens=16, do_sample=True, top_k=0, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert again == generate_answers(model, tok, prompts, max_new_tokens=16, do_sample=True, top_k=0, seed=3)


def test_peft_wrapped_model_is_not_taken_by_the_fast_path():
    from peft import LoraConfig, get_peft_model

    model = tiny_lm()
    assert fast_path_ok(model)
    ids, mask = left_padded([3, 6])
    before = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not fast_path_ok(peft_model) and not fast_path_ok(peft_model.base_model.model)  # LoRA layers inside
    with torch.no_grad():  # LoRA's B starts at zero; make the adapters change the arithmetic
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    after = peft_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    assert after.tolist() != before.tolist()  # generated through the adapters, by transformers' generate


def test_training_mode_with_gradient_checkpointing_still_fills_the_cache():
    model = tiny_lm()
    ids, mask = left_padded([4, 7])
    ref = sample(model, ids, mask, max_new_tokens=10, pad_token_id=PAD)
    model.gradient_checkpointing_enable()
    model.train()  # as TRL may leave it when it generates mid-training
    assert sample(model, ids, mask, max_new_tokens=10, pad_token_id=PAD).tolist() == ref.tolist()
    assert model.training


def test_model_generate_routes_plain_calls_to_the_sampler(monkeypatch):
    """GPTForCausalLM.generate: TRL-style plain sampling and greedy calls take the sampler; anything
    the sampler does not implement goes to transformers' generate."""
    calls = []
    real = sampler.sample
    monkeypatch.setattr(sampler, "sample", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    model = tiny_lm()
    ids, mask = left_padded([3, 6])
    greedy = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD)
    assert len(calls) == 1 and calls[0]["eos_token_id"] == EOS  # eos from the model's generation config
    assert greedy.tolist() == hf_generate(model)(input_ids=ids, attention_mask=mask, max_new_tokens=10,
                                                 do_sample=False, pad_token_id=PAD).tolist()
    # What TRL's GRPO/RLOO pass (trl/trainer/grpo_trainer.py, generation_kwargs).
    trl_config = GenerationConfig(max_new_tokens=8, do_sample=True, pad_token_id=PAD, bos_token_id=1,
                                  eos_token_id=[EOS], temperature=0.9, top_p=0.95, top_k=0, min_p=None,
                                  repetition_penalty=1.0, cache_implementation=None, disable_compile=True)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=trl_config)
    assert len(calls) == 2 and out.shape[0] == 2 and out.shape[1] <= ids.shape[1] + 8
    assert calls[1]["do_sample"] and (calls[1]["temperature"], calls[1]["top_p"], calls[1]["top_k"]) == (0.9, 0.95, 0)
    for extra in (dict(repetition_penalty=1.3), dict(num_return_sequences=2, do_sample=True),
                  dict(return_dict_in_generate=True, output_scores=True), dict(min_p=0.1, do_sample=True),
                  dict(use_cache=False), dict(num_beams=2)):
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, pad_token_id=PAD, **extra)
        assert len(calls) == 2, extra  # transformers' generate did it
