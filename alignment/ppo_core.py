"""The arithmetic of PPO for language models, as small pure functions on tensors.

Shapes: a rollout batch is B answers of at most R response tokens, right-padded; `mask` (B, R) is
1 on the real response tokens (the end-of-turn token included) and 0 on the padding after it.
Every function here is unit-tested against a direct computation (tests/test_ppo_core.py); the
numbered details follow Huang et al. 2024, "The N Implementation Details of RLHF with PPO".

    masked_mean, masked_var, masked_whiten   statistics over the real tokens only (`total`: over every process's)
    kl_per_token                             log p - log q (k1) or (r - 1) - log r (k3), per token
    per_token_rewards                        -kl_coef * kl on every real token, + score on the last one
    gae                                      generalised advantage estimation, returns = A + V
    policy_loss                              clipped surrogate, clip fraction, approximate KL, ratio
    value_loss                               clipped value loss (max of clipped and unclipped)
    explained_variance                       1 - Var[returns - values] / Var[returns]
    FixedKLController, AdaptiveKLController  the KL coefficient (Ziegler et al. 2019)
"""

from __future__ import annotations

import math

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None, total=None) -> torch.Tensor:
    """Mean of x over the masked entries. `total` (a sum over processes, e.g. accelerate's reduce) makes it the
    mean over the masked entries of every process's x: the global batch's, not this process's share."""
    mask = mask.to(x.dtype)
    if dim is None:
        total = total or (lambda t: t)
        return total((x * mask).sum()) / total(mask.sum()).clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, total=None) -> torch.Tensor:
    """Variance over the masked entries (of every process with `total`); Bessel-corrected by default, as TRL's
    old `masked_var`."""
    mean = masked_mean(x, mask, total=total)
    var = masked_mean((x - mean) ** 2, mask, total=total)
    n = mask.sum() if total is None else total(mask.sum().to(x.dtype))
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  total=None) -> torch.Tensor:
    """(x - mean) / std over the masked entries (detail: advantage whitening); padding comes back as 0. With
    `total`, mean and std are the global batch's, so every process's advantages are whitened alike.

    `shift_mean=False` only scales (used for reward whitening, which must keep the reward's sign).
    """
    mean, var = masked_mean(x, mask, total=total), masked_var(x, mask, total=total)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) on the policy's own samples.

    k1: log p - log q (unbiased, can be negative); k3: (r - 1) - log r with r = q / p (never negative).
    """
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return log_ratio.exp() - 1 - log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def last_indices(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).amax(dim=1)


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, kl), both (B, R): the KL penalty -kl_coef * kl on every real response token, and the
    reward model's score added at the last real response token (the end of turn, or the last token
    of an answer cut off by the length budget). Padding gets 0."""
    mask_f = mask.to(logprobs.dtype)
    kl = kl_per_token(logprobs, ref_logprobs, estimator) * mask_f
    rewards = -kl_coef * kl
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_indices(mask)] += scores.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, with V and A taken
    as 0 past the last real token (the episode ends there). Returns (advantages, returns = A + V),
    both 0 on padding; returns are computed from the unwhitened advantages.
    """
    mask_f = mask.to(values.dtype)
    rewards, values = rewards * mask_f, values * mask_f
    R = rewards.shape[1]
    last = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask_f[:, t]
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, (advantages + values) * mask_f


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, averaged over the real tokens.

    loss = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))). Stats (detached):
    clip_fraction (share of tokens where the clipped term is the larger), approx_kl
    (0.5 * mean(log ratio ^ 2)), ratio (mean) and ratio_max_deviation (max |ratio - 1|).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        real = mask.bool()
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio ** 2, mask),
            "ratio": masked_mean(ratio, mask),
            "ratio_max_deviation": (ratio - 1).abs()[real].max() if real.any() else ratio.new_zeros(()),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5 * mean(max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)) over the real tokens."""
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_loss = (values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((clipped_loss > unclipped_loss).to(values.dtype), mask)}
    return loss, stats


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, total=None) -> float:
    """1 - Var[returns - values] / Var[returns] over the real tokens (1 is perfect, 0 a constant guess)."""
    var_returns = masked_var(returns, mask, unbiased=False, total=total)
    if var_returns <= 0:
        return float("nan")
    return float(1 - masked_var(returns - values, mask, unbiased=False, total=total) / var_returns)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019: move the coefficient so the KL tracks `target`.

    error = clip(KL / target - 1, -0.2, 0.2); value *= 1 + error * n_steps / horizon, where n_steps
    is the number of episodes (answers) in the rollout just used.
    """

    def __init__(self, value: float, target: float, horizon: float):
        super().__init__(value)
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target_kl > 0 and kl_horizon > 0")
        self.target, self.horizon = float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
