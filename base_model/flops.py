"""FLOP counting and the machine's matmul peak, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch


def flops_per_token(n_params: int, n_layers: int, hidden_size: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B:
    6 per parameter (2 forward, 4 backward) plus the attention scores and values, 12 * L * d * T."""
    return 6 * n_params + 12 * n_layers * hidden_size * seq_len


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 0.5,
                        device: str | torch.device = "cpu") -> float:
    """Best sustained square-matmul FLOP/s on this device in `dtype`, the ceiling MFU is measured against."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm up kernels and caches
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best
