"""The lab's sampler with a compiled decode step: static shapes, compiled once per shape, reused by every call.

What `cache_implementation: static` asks of transformers' `generate`, for GPTForCausalLM: the eager sampler
(`sampler.py`) spends most of a small model's time per token launching ~25 operations per layer; compiled,
one decode step is a handful of fused kernels (and on a GPU one CUDA graph replay, `mode="reduce-overhead"`).
To compile once and reuse, nothing in the step may change shape between tokens or between calls:

- the batch is padded up to a bucket (1, 2, 4, ..., 64, then multiples of 64) by repeating its last row;
- the KV cache spans a bucketed length (prompt + new tokens rounded up to a multiple of 64), and
  each new token attends over all of it through an additive bias row: -inf on padding and on positions
  not yet written, 0 once a position holds a real token;
- the position being written is a tensor, so the same graph serves every step;
- weights are inputs, copied into buffers that live with the shape: a policy that trains between calls
  reuses the graph, and a CUDA graph sees the same addresses every replay.

So a stage pays the compile once per (batch bucket, length bucket) it meets: `compile_seconds()` says how
long each took. Rows that end their turn stay in the batch (a static batch cannot shrink): at large batches
with answers of uneven length that is wasted work the eager sampler does not do; `rlhf-lab bench` measures
both. The prompt goes through the model's own forward pass, as in the eager sampler; token choice
(`sampler._pick`) runs eagerly on the real rows only, in the eager sampler's way (the two draw alike until a
row ends, after which the eager sampler's smaller batch takes other numbers from the stream). Greedy tokens
equal `generate`'s and the sampled distribution is the model's (tests/test_static_decode.py). A shape holds
its KV cache for the life of the process, and the shapes of one model share one copy of its fused weights;
`release()` frees them all.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .sampler import _Decoder, _pick, _rms_scale, checked_inputs

_weights: dict[tuple, _Decoder] = {}  # per (model shape, dtype, device): the fused weights its shapes share
_shapes: dict[tuple, "_Shape"] = {}  # per (model shape, dtype, device, batch bucket, length bucket)
_compile_seconds: dict[str, float] = {}  # shape label -> seconds its first call took (the compile)
_calls: dict[str, int] = {}  # shape label -> calls (sample_static calls that used it)


def batch_bucket(n: int) -> int:
    """1, 2, 4, ..., 64, then multiples of 64: a handful of compiled shapes for any batch size."""
    return 1 << (n - 1).bit_length() if n <= 64 else -(-n // 64) * 64


def length_bucket(n: int) -> int:
    """Multiples of 64: every step attends over the whole bucket, so a tighter one is less wasted arithmetic."""
    return max(64, -(-n // 64) * 64)


def compile_seconds() -> dict[str, float]:
    """Seconds each compiled shape took to compile (its first call), keyed by the shape's label
    ('hidden 128 x 4 layers, batch 16 x length 128')."""
    return dict(_compile_seconds)


def shape_calls() -> dict[str, int]:
    """How many generation calls each compiled shape has served, by the same labels."""
    return dict(_calls)


def release() -> None:
    """Free every shape's KV cache and the weight copies (a later call compiles again, from Inductor's cache)."""
    _shapes.clear()
    _weights.clear()


def _step(token, pos, cos, sin, bias, embed, head, eps_head: float, weights, keys, values, eps, H: int, K: int, D: int):
    """One token per row through every layer, over a static cache. token (B,), pos (1,) the cache position written,
    cos/sin (B, 1, 1, D), bias (B, 1, 1, L) additive, keys/values per layer (B, K, L, D). Float logits (B, vocab)."""
    B, L = token.shape[0], keys[0].shape[2]
    bias.index_fill_(3, pos, 0.0)  # the new token's own position becomes visible
    x = F.embedding(token, embed)  # (B, C)
    for (qkv, o, gate_up, down), k_cache, v_cache, (eps1, eps2) in zip(weights, keys, values, eps):
        a = (x @ qkv) * _rms_scale(x, eps1)  # (B, (2H + 3K) * D)
        qk = a[:, : (H + K) * D].view(B, H + K, 1, D)
        qk_rot = a[:, (H + K) * D : 2 * (H + K) * D].view(B, H + K, 1, D)
        qk = qk * cos + qk_rot * sin
        k_cache.index_copy_(2, pos, qk[:, H:])
        v_cache.index_copy_(2, pos, a[:, 2 * (H + K) * D :].view(B, K, 1, D))
        q = qk[:, :H].reshape(B * K, H // K, D)
        scores = torch.bmm(q, k_cache.reshape(B * K, L, D).transpose(1, 2)) * D**-0.5  # (B * K, H // K, L)
        scores = scores.view(B, K, H // K, L) + bias
        y = torch.bmm(scores.softmax(-1).view(B * K, H // K, L), v_cache.reshape(B * K, L, D))  # (B * K, H // K, D)
        x = x + y.reshape(B, H * D) @ o
        gate, up = ((x @ gate_up) * _rms_scale(x, eps2)).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ down
    return ((x @ head) * _rms_scale(x, eps_head)).float()


class _Shape:
    """The buffers and the compiled step of one (model shape, batch bucket, length bucket)."""

    def __init__(self, decoder: _Decoder, weights: _Decoder, batch: int, length: int, label: str):
        self.batch, self.length, self.label = batch, length, label
        self.decoder = decoder  # its own KVCache (batch x length); the weights are the model's shared copies
        decoder.embed, decoder.head, decoder.layers = weights.embed, weights.head, weights.layers
        decoder.model = None  # each call's model runs its prompt; the shape keeps no model alive
        self.bias = torch.empty(batch, 1, 1, length, dtype=decoder.embed.dtype, device=decoder.embed.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=decoder.embed.device)
        cuda = decoder.embed.device.type == "cuda"
        if cuda:
            self.step = torch.compile(_step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        else:  # Inductor's C++ wrapper: 0.51 against 0.61 ms per token (1M, batch 1), for ~14 s of compiling, not 8
            self.step = torch.compile(_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
        self.compiled = False
        if cuda:  # the cache, bias and weights keep their addresses between calls: what a CUDA graph replays
            for t in [*decoder.cache.k, *decoder.cache.v, self.bias, self.pos, *_weight_tensors(weights)]:
                torch._dynamo.mark_static_address(t)

    def run(self, token, cos, sin):
        d = self.decoder
        args = (token, self.pos, cos, sin, self.bias, d.embed, d.head, d.eps,
                [(layer.qkv, layer.o, layer.gate_up, layer.down) for layer in d.layers], d.cache.k, d.cache.v,
                [(layer.eps1, layer.eps2) for layer in d.layers], d.H, d.K, d.D)
        if self.compiled:
            return self.step(*args)
        started = time.perf_counter()
        logits = self.step(*args)
        _compile_seconds[self.label] = round(time.perf_counter() - started, 2)
        self.compiled = True
        return logits


def _weight_tensors(d: _Decoder) -> list:
    return [d.embed, d.head] + [t for layer in d.layers for t in (layer.qkv, layer.o, layer.gate_up, layer.down)]


def _shape_for(model, batch: int, length: int) -> _Shape:
    """The compiled shape for this call, its model's weights copied into the buffers every shape of it shares (a
    trained policy has new ones; the buffers keep their addresses)."""
    cfg = model.config
    model_key = (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
                 cfg.head_dim, cfg.intermediate_size, cfg.vocab_size, cfg.rope_theta, cfg.rms_norm_eps, model.dtype,
                 str(model.lm_head.weight.device))
    fresh = _Decoder(model, 1, 1)  # this call's fused weights (the embedding is the model's own tensor)
    if model_key not in _weights:
        fresh.embed = fresh.embed.detach().clone()  # a buffer of its own: later calls copy into it
        _weights[model_key] = fresh
    else:
        for buffer, new in zip(_weight_tensors(_weights[model_key]), _weight_tensors(fresh)):
            buffer.copy_(new)
    key = (*model_key, batch, length)
    if key not in _shapes:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # one graph per shape
        label = (f"hidden {cfg.hidden_size} x {cfg.num_hidden_layers} layers, {str(model.dtype)[6:]} on "
                 f"{model.lm_head.weight.device.type}, batch {batch} x length {length}")
        _shapes[key] = _Shape(_Decoder(model, batch, length), _weights[model_key], batch, length, label)
    shape = _shapes[key]
    shape.decoder.model = model  # runs the prompt; let go after it
    _calls[shape.label] = _calls.get(shape.label, 0) + 1
    return shape


@torch.no_grad()  # not inference_mode, as sampler.sample: TRL trains on the returned ids
def sample_static(model, input_ids, attention_mask=None, *, max_new_tokens: int, eos_token_id=None,
                  pad_token_id: int = 0, do_sample: bool = False, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """`sampler.sample`'s contract (left-padded prompts (B, P) in, (B, P + steps) out) through the compiled step."""
    input_ids, real = checked_inputs(model, input_ids, attention_mask, do_sample, temperature, "static sampler")
    B, P = input_ids.shape
    device = input_ids.device
    if max_new_tokens <= 0:
        return input_ids
    Bb, L = batch_bucket(B), length_bucket(P + max_new_tokens)
    shape = _shape_for(model, Bb, L)
    decoder = shape.decoder
    fill = Bb - B  # padding rows: copies of the last row, decoded and thrown away
    ids = torch.cat([input_ids, input_ids[-1:].expand(fill, P)]) if fill else input_ids
    mask = torch.cat([real, real[-1:].expand(fill, P)]) if fill else real
    for cache in (*decoder.cache.k, *decoder.cache.v):  # masked positions still enter q @ k: no stale inf or nan
        cache[:, :, P:].zero_()
    decoder.cache.length = 0
    try:
        logits = decoder.prefill(ids, mask.long())
    finally:
        decoder.model = None
    shape.bias.fill_(float("-inf"))
    shape.bias[:, 0, 0, :P].masked_fill_(mask, 0.0)
    # (steps, Bb, 1, 1, D): each step's slice contiguous, so its strides (which the graph is compiled for) do
    # not depend on the number of steps
    cos, sin = (t.transpose(0, 1).unsqueeze(2).contiguous() for t in decoder.rotary(mask.sum(-1), max_new_tokens))
    stop = None if eos_token_id is None else torch.tensor(eos_token_id, device=device).view(-1)
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    filler = torch.zeros(fill, dtype=input_ids.dtype, device=device)
    steps = 0
    for step in range(max_new_tokens):
        token = _pick(logits[:B], do_sample, temperature, top_k, top_p, generator).masked_fill(done, pad_token_id)
        out[:, step] = token
        steps = step + 1
        if stop is not None:
            done |= (token == stop) if stop.numel() == 1 else torch.isin(token, stop)
            if bool(done.all()):
                break
        if steps == max_new_tokens:
            break
        shape.pos.fill_(P + step)
        logits = shape.run(torch.cat([token, filler]) if fill else token, cos[step], sin[step])
    return torch.cat([input_ids, out[:, :steps]], dim=1)
