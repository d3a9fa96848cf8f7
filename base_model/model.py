"""The GPT, in plain PyTorch: the building blocks of a modern decoder-only transformer.

Read top to bottom: RMSNorm -> rotary positions -> attention -> SwiGLU MLP -> pre-norm block.
The stack that puts the blocks together (embeddings, N blocks, final norm, tied head) is
`GPTModel` / `GPTForCausalLM` in `hf.py`, which adds only what transformers needs around it.

Every module is named exactly as in transformers' Llama (`self_attn.q_proj`, `mlp.gate_proj`,
`input_layernorm`, ...) and computes exactly what Llama computes, so `export.py` converts a trained
model into `LlamaForCausalLM` by copying the state dict. No biases anywhere.

Shapes: B batch, T new tokens, S = past + T keys, H query heads, K key/value heads, D head_dim.
`config` is any object with the Llama field names (`hf.GPTConfig` in practice).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (same arithmetic as LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# ---- rotary position embeddings (Llama convention: the two halves of each head are paired) ----


def rope_cos_sin(position_ids, head_dim: int, theta: float, dtype):
    """position_ids (B, T) -> cos, sin (B, T, D). Computed on the fly: there is no buffer to load."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=position_ids.device) / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x (B, heads, T, D); cos/sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


# ---- positions and masks ----


def positions_from_mask(attention_mask, past_len: int, T: int):
    """Position of each new token = number of real tokens before it (so left padding is harmless).

    attention_mask (B, S) covers past + new tokens; returns (B, T). Pads get position 0.
    """
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return pos[:, past_len : past_len + T]


def attention_mask_4d(attention_mask, T: int, past_len: int):
    """Boolean (B, 1, T, S) mask, True = may attend: causal (offset by the cache) AND not padding.

    Every query also sees itself, so a padding query never has an empty row (which would give NaN);
    real tokens always see themselves anyway, so their results are unchanged.
    """
    S = past_len + T
    q_pos = torch.arange(past_len, S, device=attention_mask.device)[:, None]  # (T, 1) absolute position
    k_pos = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    mask = causal[None] & attention_mask[:, None, -S:].bool()  # (B, T, S)
    mask = mask | (k_pos == q_pos)[None]
    return mask[:, None]  # (B, 1, T, S)


# ---- the block ----


class Attention(nn.Module):
    """Causal self-attention with rotary positions, grouped-query heads and a KV cache."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, C, bias=False)
        self.o_proj.is_residual_proj = True  # init scaled by 1/sqrt(2 * n_layers), see hf._init_weights

    def forward(self, x, cos, sin, mask=None, cache=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # transformers Cache protocol: append, get everything so far
            k, v = cache.update(k, v, self.layer_idx)  # (B, K, S, D)
        if self.n_kv_heads != self.n_heads:  # grouped-query attention: share each K/V head
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        if mask is None:  # no padding, no cache: the plain causal fast path
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.is_residual_proj = True

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


def residual_std(config) -> float:
    """GPT-2's init: projections that write into the residual stream get std / sqrt(2 * n_layers)."""
    return config.initializer_range / math.sqrt(2 * config.num_hidden_layers)
