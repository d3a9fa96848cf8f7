"""The lab's own batched sampler: a preallocated KV cache and a lean decode step for GPTForCausalLM.

Why not transformers' `generate`: on a CPU with a ~1M-parameter model almost all of its time per
token goes to bookkeeping (cache objects, logits processors, stopping criteria, mask building),
not arithmetic. Rollouts and evaluations are dominated by generation, so this file does the same
thing with as few tensor operations per token as it can:

- keys and values live in one preallocated buffer per layer, written in place at each position;
- q, k, v come from one fused matmul, gate and up from another (weights concatenated once per call);
- each RMSNorm weight and the rotary half-rotation are folded into the matmul weights;
- rotary cos/sin are a table looked up by position; padding is an additive bias row per sequence;
- grouped-query attention without copying K/V per head (SDPA's `enable_gqa` at small batches,
  two batched matmuls from batch 16);
- rows that have ended their turn leave the batch, so a batch does not run at full width until its
  longest answer ends.

The arithmetic is the model's (`model.py`): same RMSNorm, rotary convention and SwiGLU, so greedy
tokens equal `generate`'s (tests/test_sampler.py checks it, and the sampled distribution too).
Sampling follows transformers' order and semantics: temperature, then top-k (0 = off), then top-p
(1.0 = off, the most likely token always kept), then one `torch.multinomial` draw per step from
the global RNG (or `generator`).

`sample` is the entry point; `fast_path_ok` says whether a model can take it (our plain
GPTForCausalLM, not one whose linear layers were wrapped, e.g. by PEFT's LoRA). `generate_fast`
lets `GPTForCausalLM.generate` (what TRL's GRPO and RLOO call) take it when a call asks for nothing
beyond plain greedy or sampled decoding (`generate_route.py`); any other setting goes to transformers'
`generate`. A call with `cache_implementation="static"` takes the compiled decode step (`static_decode.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .model import RMSNorm


def fast_path_ok(model) -> bool:
    """True for our GPTForCausalLM whose weights are plain tensors in plain nn.Linear layers."""
    # The class says so itself (base_model/hf.py), so this module needs no import of it; a peft wrapper, a
    # subclass or a foreign model lacks the mark in its own class dictionary.
    if not type(model).__dict__.get("takes_lab_sampler", False):
        return False
    for layer in model.model.layers:
        linears = (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj)
        if any(type(m) is not nn.Linear for m in linears) or type(layer.input_layernorm) is not RMSNorm:
            return False  # LoRA (or anything else) injected: its extra arithmetic would be skipped
    return type(model.lm_head) is nn.Linear and type(model.model.embed_tokens) is nn.Embedding


def _rms_scale(x, eps_sum: float):
    """1 / (sqrt(C) * rms(x)) per row, (B, 1), as rsqrt(sum(x**2) + C * eps): four fast kernels where
    mean(x**2) takes several slow ones. The weights after it carry the remaining sqrt(C)."""
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().add_(eps_sum).rsqrt_()


def _rotated_rows(w, n_heads: int, head_dim: int):
    """Rows of w reordered so that x @ result.T == rotate_half(x @ w.T) per head: rotary as part of a matmul."""
    w = w.view(n_heads, 2, head_dim // 2, -1)
    return torch.cat((-w[:, 1], w[:, 0]), dim=1).reshape(n_heads * head_dim, -1)


class _Layer:
    """One block's weights for a decode step, transposed once for `x @ w` and fused into three matmuls:
    [q, k, rotate_half(q), rotate_half(k), v], then o, then [gate, up], then down. Each RMSNorm weight
    is folded into the matmul after it; its 1/rms scale multiplies the matmul's output instead."""

    def __init__(self, block, H: int, K: int, D: int):
        attn, mlp = block.self_attn, block.mlp
        q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
        qkv = torch.cat([q, k, _rotated_rows(q, H, D), _rotated_rows(k, K, D), v])
        scale = block.input_layernorm.weight.shape[0] ** 0.5  # the sqrt(C) that _rms_scale leaves out
        self.qkv = (qkv * block.input_layernorm.weight * scale).t().contiguous()
        self.o = attn.o_proj.weight.t().contiguous()
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        self.gate_up = (gate_up * block.post_attention_layernorm.weight * scale).t().contiguous()
        self.down = mlp.down_proj.weight.t().contiguous()
        C = block.input_layernorm.weight.shape[0]
        self.eps1, self.eps2 = C * block.input_layernorm.eps, C * block.post_attention_layernorm.eps


class KVCache:
    """Keys and values of every layer for the whole generation, allocated once: (B, K, max_len, D) each.

    Speaks enough of transformers' Cache protocol (`update`, `get_seq_length`) for the model's own
    forward pass to fill it with the prompt; decode steps then write one position at a time.
    """

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.length = 0  # positions filled; the caller advances it after each forward pass

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def update(self, k, v, layer_idx: int, *args, **kwargs):
        end = self.length + k.shape[2]
        self.k[layer_idx][:, :, self.length:end] = k
        self.v[layer_idx][:, :, self.length:end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def keep_rows(self, rows):
        """Only these batch rows from now on (a 1-D index tensor)."""
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]


class _Decoder:
    """The model over a KVCache: the prompt through the model's own forward, then one lean step per token."""

    def __init__(self, model, batch: int, max_len: int):
        cfg = model.config
        self.model = model
        self.H, self.K, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        H, K, D = self.H, self.K, self.D
        self.embed = model.model.embed_tokens.weight
        C = cfg.hidden_size
        self.head = (model.lm_head.weight * model.model.norm.weight * C**0.5).t().contiguous()
        self.eps = C * model.model.norm.eps
        self.layers = [_Layer(b, H, K, D) for b in model.model.layers]
        dtype, device = self.embed.dtype, self.embed.device
        self.cache = KVCache(len(self.layers), batch, K, max_len, D, dtype, device)
        # Rotary table: the same arithmetic as model.rope_cos_sin, once for every position; the
        # same (B, D) row serves every head of q and k.
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float, device=device) / D))
        freqs = torch.arange(max_len, device=device).float()[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)  # (max_len, D)

    def prefill(self, input_ids, attention_mask):
        """Run the prompt (B, P) through the model, filling the cache; float logits (B, vocab) of the last position."""
        training = self.model.training
        self.model.eval()  # in training mode with gradient checkpointing the backbone would skip the cache
        try:
            h = self.model.model(input_ids=input_ids, attention_mask=attention_mask, cache=self.cache,
                                 use_cache=True).last_hidden_state
        finally:
            self.model.train(training)
        self.cache.length = input_ids.shape[1]
        return self.model.lm_head(h[:, -1]).float()

    def rotary(self, first_positions, n: int):
        """cos and sin (B, n, 1, D) for positions first..first+n-1 of each row: one gather for all steps."""
        positions = first_positions[:, None] + torch.arange(n, device=first_positions.device)
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)

    def step(self, token, cos, sin, mask):
        """One new token per row (B,) with its rotary cos, sin (B, 1, D); mask None (attend to everything
        cached) or an additive (B * K, 1, S) bias, 0 or -inf per cached position. Returns float logits (B, vocab)."""
        B, (H, K, D), at = token.shape[0], (self.H, self.K, self.D), self.cache.length
        x = F.embedding(token, self.embed)  # (B, C)
        for i, layer in enumerate(self.layers):
            a = (x @ layer.qkv).mul_(_rms_scale(x, layer.eps1))  # (B, (2H + 3K) * D)
            qk = a[:, : (H + K) * D].view(B, H + K, D)
            qk_rot = a[:, (H + K) * D : 2 * (H + K) * D].view(B, H + K, D)
            qk = torch.addcmul(qk * cos, qk_rot, sin)  # rotary positions on queries and keys at once
            self.cache.k[i][:, :, at] = qk[:, H:]
            self.cache.v[i][:, :, at] = a[:, 2 * (H + K) * D :].view(B, K, D)
            keys, values = self.cache.k[i][:, :, : at + 1], self.cache.v[i][:, :, : at + 1]
            if B >= _BMM_ATTENTION_FROM:
                y = _attend(qk[:, :H], keys, values, mask)
            else:  # one SDPA call costs less than _attend's four ops at small batch sizes
                bias = None if mask is None else mask.view(B, K, 1, -1)[:, :1]  # (B, 1, 1, S): rows agree over K
                y = F.scaled_dot_product_attention(qk[:, :H, None], keys, values, attn_mask=bias, enable_gqa=H != K)
            x = torch.addmm(x, y.view(B, H * D), layer.o)
            gate, up = (x @ layer.gate_up).mul_(_rms_scale(x, layer.eps2)).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate).mul_(up), layer.down)
        self.cache.length = at + 1
        return (x @ self.head).mul_(_rms_scale(x, self.eps)).float()


# Batch size from which _attend beats SDPA in a decode step (measured on a 2-core CPU, ~1M parameters:
# about 10% faster at batch 64, even at 8, slower at 1).
_BMM_ATTENTION_FROM = 16


def _attend(q, keys, values, bias):
    """Attention of one new query per row: q (B, H, D); keys, values (B, K, S, D); bias (B * K, 1, S) or None.

    The H // K query heads that share a key/value head form one small matrix, so a decode step is two
    batched matmuls and a softmax; SDPA spends more than that on bookkeeping at these sizes.
    """
    B, H, D = q.shape
    K, S = keys.shape[1], keys.shape[2]
    q = q.reshape(B * K, H // K, D)
    keys_t = keys.reshape(B * K, S, D).transpose(1, 2)  # a view: the cache's (B, K) dimensions merge
    if bias is None:
        scores = torch.bmm(q, keys_t).mul_(D**-0.5)
    else:
        scores = torch.baddbmm(bias, q, keys_t, alpha=D**-0.5)
    return torch.bmm(scores.softmax(-1), values.reshape(B * K, S, D)).view(B, H, D)


def _pick(logits, do_sample: bool, temperature: float, top_k: int, top_p: float, generator):
    """Next token per row from float logits (B, vocab), as transformers' sampling warpers would."""
    if not do_sample:
        return logits.argmax(-1)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:  # drop the least likely tokens whose total probability is at most 1 - top_p
        sorted_logits, order = torch.sort(logits, descending=False)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


def checked_inputs(model, input_ids, attention_mask, do_sample: bool, temperature: float, sampler: str):
    """The prompts on the model's device and their real-token mask (bool), once the model and settings are ones
    the lab's samplers take."""
    if not fast_path_ok(model):
        raise TypeError(f"{type(model).__name__}: the {sampler} takes a plain GPTForCausalLM (see fast_path_ok)")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    device = model.lm_head.weight.device
    input_ids = input_ids.to(device)
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    return input_ids, real


@torch.no_grad()  # not inference_mode: TRL trains on the returned ids, which must be ordinary tensors
def sample(model, input_ids, attention_mask=None, *, max_new_tokens: int, eos_token_id=None, pad_token_id: int = 0,
           do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue left-padded prompts (B, P) by at most max_new_tokens; returns (B, P + steps) like `generate`.

    A row that produced a token of `eos_token_id` (an int or a list) is finished: later positions hold
    `pad_token_id`; generation stops when every row is finished.
    """
    input_ids, real = checked_inputs(model, input_ids, attention_mask, do_sample, temperature, "fast sampler")
    B, P = input_ids.shape
    device = input_ids.device
    if max_new_tokens <= 0:
        return input_ids
    decoder = _Decoder(model, B, P + max_new_tokens)
    stop = None if eos_token_id is None else torch.tensor(eos_token_id, device=device).view(-1)
    # Additive attention bias of each row's cached positions, shaped for _attend: -inf on padding.
    bias = torch.zeros(B, model.config.num_key_value_heads, 1, P + max_new_tokens, dtype=model.dtype, device=device)
    bias[:, :, :, :P].masked_fill_(~real[:, None, None], float("-inf"))
    bias = bias.view(-1, 1, P + max_new_tokens)
    out = torch.full((B, max_new_tokens), pad_token_id, dtype=input_ids.dtype, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    # The prompt in one forward pass of the model itself, then one lean step per new token. A new token
    # sees every real prompt token and every generated one; with no padding, no bias at all.
    logits = decoder.prefill(input_ids, real.long())
    padded = not bool(real.all())
    # Rotary position of the first new token = the real tokens before it; one more per step.
    cos, sin = decoder.rotary(real.sum(-1), max_new_tokens)
    rows = torch.arange(B, device=device)  # the output row of each row still decoded
    K = model.config.num_key_value_heads
    steps = 0
    for step in range(max_new_tokens):
        token = _pick(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(done, pad_token_id)
        out[rows, step] = token
        steps = step + 1
        if stop is not None:
            done |= (token == stop) if stop.numel() == 1 else torch.isin(token, stop)
            if bool(done.all()):
                break
        if steps == max_new_tokens:
            break
        if stop is not None and 4 * int(done.sum()) >= len(done) > 1:
            # A batch runs until its longest answer ends: once a quarter of the rows have finished,
            # drop them, so the remaining steps cost what the unfinished rows need.
            keep = (~done).nonzero().squeeze(1)
            decoder.cache.keep_rows(keep)
            rows, done, token, cos, sin = rows[keep], done[keep], token[keep], cos[keep], sin[keep]
            bias = bias.view(-1, K, 1, bias.shape[-1])[keep].view(-1, 1, bias.shape[-1])
        logits = decoder.step(token, cos[:, step], sin[:, step], bias[:, :, : P + step + 1] if padded else None)
    return torch.cat([input_ids, out[:, :steps]], dim=1)
