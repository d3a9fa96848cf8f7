"""The compiled static-shape decode (`cache_implementation="static"`) against transformers' `generate`: the
same greedy tokens, the model's sampled distribution, one compile per shape reused after the weights change.
Every case here pads to one shape (batch bucket 64, length bucket 64), so the suite compiles it once."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from test_sampler import EOS, PAD, V, hf_generate, left_padded, tiny_lm

from base_model import static_decode
from base_model.sampler import sample
from base_model.static_decode import batch_bucket, length_bucket, sample_static

ROWS = [1 + (i * 5) % 11 for i in range(40)]  # 40 left-padded prompts of 1..11 tokens: bucket 64 x 64


def test_buckets():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 16, 17, 64, 65, 130)] == [1, 2, 4, 8, 16, 32, 64, 128, 192]
    assert [length_bucket(n) for n in (1, 64, 65, 200)] == [64, 64, 128, 256]


def test_greedy_tokens_equal_generate_with_and_without_an_end_token():
    model = tiny_lm()
    ids, mask = left_padded(ROWS)
    greedy = dict(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=PAD)
    free = hf_generate(model)(**greedy, eos_token_id=None)
    assert sample_static(model, ids, mask, max_new_tokens=24, pad_token_id=PAD).tolist() == free.tolist()
    new = free[:, ids.shape[1]:]
    rows_with = [(new == t).any(-1).sum().item() for t in range(V)]
    eos = max(range(V), key=lambda t: rows_with[t] if rows_with[t] < len(new) else -1)
    assert 0 < rows_with[eos] < len(new)  # some rows end, others run to the budget
    ref = hf_generate(model)(**greedy, eos_token_id=eos)
    # Through GPTForCausalLM.generate, as TRL calls it: cache_implementation="static" takes the compiled path.
    calls = []
    plain = static_decode.sample_static
    static_decode.sample_static = lambda *a, **k: (calls.append(1), plain(*a, **k))[1]
    try:
        ours = model.generate(**greedy, eos_token_id=eos, cache_implementation="static")
    finally:
        static_decode.sample_static = plain
    assert calls == [1] and ours.tolist() == ref.tolist()


def test_one_compile_per_shape_reused_after_the_weights_change():
    from torch._dynamo.utils import counters

    model = tiny_lm(seed=3)
    ids, mask = left_padded(ROWS, seed=4)
    sample_static(model, ids, mask, max_new_tokens=8, pad_token_id=PAD)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():  # a training step's worth of change: every weight moves
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05 * p.abs().mean())
    ours = sample_static(model, ids, mask, max_new_tokens=20, pad_token_id=PAD, eos_token_id=EOS)
    assert ours.tolist() == sample(model, ids, mask, max_new_tokens=20, pad_token_id=PAD, eos_token_id=EOS).tolist()
    assert counters["stats"]["unique_graphs"] == graphs  # the same compiled graph, new weights
    label = "hidden 64 x 2 layers, float32 on cpu, batch 64 x length 64"
    assert static_decode.compile_seconds()[label] > 0 and static_decode.shape_calls()[label] >= 2


def test_second_token_distribution_is_the_models():
    # The first sampled token comes from the prompt's forward pass; the second from the compiled step. Its
    # marginal, sum over t1 of p(t1) p(t2 | t1), computed exactly from the model; draws in batches of 64.
    model = tiny_lm(sharpness=3.0)
    prompt = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        p1 = model(prompt).logits[0, -1].double().div(0.8).softmax(-1)  # (V,)
        both = torch.cat([prompt.repeat(V, 1), torch.arange(V)[:, None]], dim=1)
        p2 = model(both).logits[:, -1].double().div(0.8).softmax(-1)  # (V, V): row t1
    marginal = p1 @ p2
    torch.manual_seed(5)
    n, counts = 64 * 48, torch.zeros(V, dtype=torch.float64)
    for _ in range(n // 64):
        out = sample_static(model, prompt.repeat(64, 1), None, max_new_tokens=2, do_sample=True, temperature=0.8,
                            pad_token_id=PAD)
        counts += torch.bincount(out[:, -1], minlength=V).double()
    expected = marginal * n
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]])
    expect = torch.cat([expected[big], expected[~big].sum()[None]])
    chi2, dof = ((observed - expect) ** 2 / expect).sum().item(), len(expect) - 1
    # Pearson's chi-square within 5 standard deviations of its mean (sqrt(2 dof)); a wrong temperature, a
    # stale cache position or a wrong rotary angle in the step moves it far beyond.
    assert abs(chi2 - dof) < 5 * (2 * dof) ** 0.5, (chi2, dof)
