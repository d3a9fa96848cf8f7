"""PPO's arithmetic (alignment/ppo_core.py) on hand-built tensors: each implementation detail of
Huang et al. 2024 that the lab implements, checked against a direct computation."""

import math

import pytest
import torch

from alignment import ppo_core as core

# Two answers of 4 and 2 real response tokens in a batch padded to 5.
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])


def test_masked_whiten_has_mean_0_std_1_over_the_mask_only():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0, 999.0], [-4.0, 0.5, -999.0, 42.0, 7.0]])
    white = core.masked_whiten(x, MASK)
    real = white[MASK.bool()]
    assert abs(float(real.mean())) < 1e-6
    assert abs(float(real.std()) - 1) < 1e-5  # unbiased std, as the masked variance is Bessel-corrected
    assert torch.all(white[~MASK.bool()] == 0)  # padding neither counts nor comes back nonzero
    expected = (x[MASK.bool()] - x[MASK.bool()].mean()) / x[MASK.bool()].std()
    assert torch.allclose(real, expected, atol=1e-6)


def test_masked_whiten_without_shift_keeps_the_mean():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0, 0.0], [-4.0, 0.5, 0.0, 0.0, 0.0]])
    scaled = core.masked_whiten(x, MASK, shift_mean=False)[MASK.bool()]
    assert abs(float(scaled.mean()) - float(x[MASK.bool()].mean())) < 1e-5
    assert abs(float(scaled.std()) - 1) < 1e-5


def direct_gae(rewards, values, length, gamma, lam):
    """The textbook recursion on one episode of `length` steps, in plain python."""
    advantages = [0.0] * length
    next_advantage = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t] = next_advantage
    return advantages


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_a_direct_recursion_and_ignores_padding(gamma, lam):
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    advantages, returns = core.gae(rewards, values, MASK, gamma, lam)
    for row, length in enumerate(MASK.sum(1).tolist()):
        expected = direct_gae(rewards[row].tolist(), values[row].tolist(), length, gamma, lam)
        assert advantages[row, :length].tolist() == pytest.approx(expected, abs=1e-5)
        assert returns[row, :length].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[row, :length].tolist())], abs=1e-5)
        assert torch.all(advantages[row, length:] == 0) and torch.all(returns[row, length:] == 0)
    # With lam = 1 and gamma = 1 the return is the plain sum of the rewards still to come.
    if gamma == lam == 1.0:
        to_go = [sum(rewards[0, t:4].tolist()) for t in range(4)]
        assert returns[0, :4].tolist() == pytest.approx(to_go, abs=1e-5)


def test_kl_penalty_lands_on_response_tokens_and_the_score_on_the_last_real_one():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -7.0], [-0.1, -0.2, -9.0, -9.0, -9.0]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5, -2.5, -1.0], [-0.3, -0.2, -1.0, -1.0, -1.0]])
    scores = torch.tensor([3.0, -2.0])
    rewards, kl = core.per_token_rewards(scores, logprobs, ref_logprobs, MASK, kl_coef=0.1)
    expected_kl = (logprobs - ref_logprobs) * MASK
    assert torch.allclose(kl, expected_kl)
    expected = -0.1 * expected_kl
    expected[0, 3] += 3.0  # the score at the last real token of each answer, nowhere else
    expected[1, 1] += -2.0
    assert torch.allclose(rewards, expected)
    assert torch.all(rewards[~MASK.bool()] == 0)  # nothing on padding, however odd its logprobs


def test_k3_estimator_is_nonnegative_and_zero_at_equality():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref_logprobs = torch.tensor([[-1.5, -1.0, -0.5]])
    k3 = core.kl_per_token(logprobs, ref_logprobs, "k3")
    log_r = ref_logprobs - logprobs
    assert torch.allclose(k3, log_r.exp() - 1 - log_r)
    assert torch.all(k3 >= 0) and k3[0, 2] == 0
    with pytest.raises(ValueError):
        core.kl_per_token(logprobs, ref_logprobs, "k2")


def test_an_answers_score_lands_on_its_last_real_token():
    penalised = torch.tensor([1.0, -1.0, -2.5])  # scores less the missing-end penalty (alignment/rewards.py's proxy)
    rewards, _ = core.per_token_rewards(penalised, torch.zeros(3, 2), torch.zeros(3, 2),
                                        torch.tensor([[1, 1], [1, 1], [1, 0]]), kl_coef=0.1)
    assert rewards[:, -1].tolist() == [1.0, -1.0, 0.0] and rewards[2, 0] == -2.5


def test_first_minibatch_of_an_epoch_has_ratio_1_no_clipping_and_zero_approx_kl():
    torch.manual_seed(0)
    old = -torch.rand(2, 5) * 3
    new = old.clone().requires_grad_(True)  # nothing has been updated yet: the same logprobs
    advantages = torch.randn(2, 5)
    loss, stats = core.policy_loss(new, old, advantages, MASK, cliprange=0.2)
    assert float(stats["ratio"]) == 1.0 and float(stats["ratio_max_deviation"]) == 0.0
    assert float(stats["clip_fraction"]) == 0.0 and float(stats["approx_kl"]) == 0.0
    assert torch.allclose(loss, -core.masked_mean(advantages, MASK))
    loss.backward()  # the gradient is the vanilla policy gradient -A / N on real tokens
    assert torch.allclose(new.grad, -advantages * MASK / MASK.sum())


def test_policy_loss_clips_where_the_ratio_leaves_the_trust_region():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.5]]))
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = core.policy_loss(new, old, advantages, mask, cliprange=0.2)
    # token 0: A>0, ratio 1.5 -> clipped to 1.2; token 1: A<0, ratio 0.5 -> clipped to 0.8;
    # token 2: inside; token 3: A<0, ratio 1.5 -> the unclipped (more pessimistic) term is used.
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 1.1 + 1.5) / 4)
    assert float(stats["clip_fraction"]) == pytest.approx(0.5)
    assert float(stats["approx_kl"]) == pytest.approx(0.5 * float((new ** 2).mean()))


def test_value_clipping_takes_the_larger_of_clipped_and_unclipped_losses():
    old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    new = torch.tensor([[0.5, 0.5, -0.1, 0.3]])
    returns = torch.tensor([[1.0, 0.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = core.value_loss(new, old, returns, mask, cliprange_value=0.2)
    clipped = torch.tensor([0.2, 0.2, -0.1])
    per_token = torch.max((new[0, :3] - returns[0, :3]) ** 2, (clipped - returns[0, :3]) ** 2)
    # token 0: clipped (0.2-1)^2=0.64 > 0.25; token 1: unclipped 0.25 > 0.04; token 2: equal
    assert per_token.tolist() == pytest.approx([0.64, 0.25, 1.21])
    assert float(loss) == pytest.approx(0.5 * float(per_token.mean()))
    assert float(stats["value_clip_fraction"]) == pytest.approx(1 / 3)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert core.explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert core.explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)
    noisy = returns + torch.tensor([[0.5, -0.5, 0.5, -0.5]])
    assert core.explained_variance(noisy, returns, mask) == pytest.approx(1 - 0.25 / 1.25)
    assert math.isnan(core.explained_variance(returns, torch.ones(1, 4), mask))


def test_adaptive_kl_controller_moves_the_coefficient_toward_the_target():
    high = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    high.update(current_kl=12.0, n_steps=100)  # KL above target: error clipped to 0.2, coefficient rises
    assert high.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    low = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    low.update(current_kl=4.5, n_steps=100)  # below: error -0.25 clipped to -0.2, coefficient falls
    assert low.value == pytest.approx(0.1 * (1 - 0.2 * 100 / 10000))
    near = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    near.update(current_kl=6.6, n_steps=100)
    assert near.value == pytest.approx(0.1 * (1 + 0.1 * 100 / 10000))
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 100)
    assert fixed.value == 0.1
    restored = core.AdaptiveKLController(1.0, 6.0, 10000)
    restored.load_state_dict(high.state_dict())
    assert restored.value == high.value


def _whiten_on_shard(rank: int, world: int, port: int, x, mask, out):
    """One of `world` gloo processes: whiten its shard of the rows with sums over every process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)

    def total(t):
        t = t.clone()
        dist.all_reduce(t)
        return t

    rows = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    out[rows] = core.masked_whiten(x[rows], mask[rows], total=total)
    out[len(x) + rank] = torch.full_like(x[0], core.explained_variance(x[rows] * 0.5, x[rows], mask[rows], total=total))
    dist.destroy_process_group()


def test_whitening_with_sums_over_two_processes_equals_whitening_the_whole_batch():
    # What PPO under `accelerate launch` does with its advantages: two gloo processes, each holding half the
    # rollout, whiten with the whole rollout's mean and variance, so the halves put together are the whole
    # batch whitened at once; and each half's own statistics would not give that.
    import socket

    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x = torch.randn(6, 5) * 3 + torch.arange(6.0)[:, None]  # rows differ in mean: the halves' statistics differ
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    out = torch.zeros(8, 5).share_memory_()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_whiten_on_shard, args=(2, port, x, mask, out), nprocs=2)
    whole = core.masked_whiten(x, mask)
    assert torch.allclose(out[:6], whole, atol=1e-5)
    halves = torch.cat([core.masked_whiten(x[:3], mask[:3]), core.masked_whiten(x[3:], mask[3:])])
    assert not torch.allclose(halves, whole, atol=1e-2)  # local whitening is another thing
    expected = core.explained_variance(x * 0.5, x, mask)
    assert out[6, 0].item() == pytest.approx(expected, abs=1e-5) and out[7, 0].item() == pytest.approx(expected, abs=1e-5)
