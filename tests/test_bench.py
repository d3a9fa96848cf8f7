"""`rlhf-lab bench --quick` through the CLI: every figure is in the JSON and the tokens matched (not speed)."""

import json

import pytest

from recipes.core.cli import main as rlhf_lab

TRAIN_KEYS = {"size", "params", "dtype", "batch", "seq_len", "ours_tokens_per_s", "llama_tokens_per_s", "ratio",
              "ours_mfu", "llama_mfu", "ours_flops_per_s", "llama_flops_per_s", "ours_peak_bytes", "llama_peak_bytes",
              "initial_loss_diff", "compiled"}
GENERATE_KEYS = {"size", "batch", "new_tokens", "ours_tokens_per_s", "generate_tokens_per_s", "ratio",
                 "tokens_match", "ours_peak_bytes", "generate_peak_bytes"}


def test_bench_quick_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert rlhf_lab(["bench", "--quick", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["matmul_peak_flops"]["fp32"] > 0 and report["matmul_peak_flops"]["bf16"] > 0
    assert {"threads", "gpu", "torch", "transformers", "load_average_start", "load_average_end"} <= set(report["machine"])
    assert report["machine"]["gpu"] is None  # the default device is the CPU
    assert [(r["size"], r["dtype"]) for r in report["train"]] == [("tiny", "fp32"), ("tiny", "bf16")]
    for row in report["train"]:
        assert set(row) == TRAIN_KEYS
        assert row["ours_tokens_per_s"] > 0 and row["llama_tokens_per_s"] > 0 and row["ratio"] > 0
        assert 0 < row["ours_mfu"] and 0 < row["llama_mfu"]
        assert row["ours_peak_bytes"] > 0 and row["llama_peak_bytes"] > 0
        assert row["initial_loss_diff"] < (1e-4 if row["dtype"] == "fp32" else 5e-2)  # same weights, same loss
    assert [r["batch"] for r in report["generate"]] == [1, 4]
    for row in report["generate"]:
        assert set(row) == GENERATE_KEYS
        assert row["tokens_match"] is True
        assert row["ours_tokens_per_s"] > 0 and row["generate_tokens_per_s"] > 0
    printed = capsys.readouterr().out
    assert "training step" in printed and "generation" in printed and str(out) in printed


def test_bench_dtypes_picks_the_training_rows(tmp_path):
    out = tmp_path / "bench.json"
    assert rlhf_lab(["bench", "--quick", "--dtypes", "bf16", "--gen_batches", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["dtype"] for r in report["train"]] == ["bf16"]
    assert list(report["matmul_peak_flops"]) == ["bf16"]
    assert [r["batch"] for r in report["generate"]] == [1]


@pytest.mark.parametrize("argv, message", [
    (["--dtypes", "fp16"], "unknown dtype 'fp16'"),
    (["--sizes", "huge"], "unknown size 'huge'"),
    (["--gen_batches", "1,x"], "comma-separated positive integers"),
    (["--reps", "0"], "--reps must be at least 1"),
    (["--output", "/no/such/dir/bench.json"], "expected a file path in an existing directory"),
])
def test_bench_refuses_bad_input(argv, message, capsys):
    code = rlhf_lab(["bench", "--quick", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_bench_on_cuda_without_a_gpu_says_so(capsys):
    assert rlhf_lab(["bench", "--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: torch sees no CUDA device" in err and "Traceback" not in err


def test_bench_stages_quick_runs_grpo_and_ppo_on_both_models_and_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "stages.json"
    assert rlhf_lab(["bench", "--stages", "--quick", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["stages"]
    assert [(r["stage"], r["size"], r["steps"]) for r in rows] == [("grpo", "tiny", 2), ("ppo", "tiny", 2)]
    for row in rows:
        for side in ("gpt", "llama"):
            parts = [row[f"{side}_{p}_seconds"] for p in ("sampling", "scoring", "updating")]
            assert all(p > 0 for p in parts) and sum(parts) == pytest.approx(row[f"{side}_seconds"])
            assert row[f"{side}_steps_per_s"] == pytest.approx(2 / row[f"{side}_seconds"])
            # a step samples at most batch x max_completion_length tokens (random weights rarely end early)
            assert 0 < row[f"{side}_tokens_sampled"] <= 2 * row["batch"] * row["max_completion_length"]
        assert row["gpt_fast_sampler_calls"] == 2 and row["llama_fast_sampler_calls"] == 0  # one rollout a step
        assert row["steps_per_s_ratio"] == pytest.approx(row["gpt_steps_per_s"] / row["llama_steps_per_s"])
        assert row["sampling_ratio"] == pytest.approx(row["llama_sampling_seconds"] / row["gpt_sampling_seconds"])
    printed = capsys.readouterr().out
    assert "RL stages" in printed and " grpo  tiny" in printed and "  ppo  tiny" in printed and str(out) in printed


def test_bench_stages_refuses_bad_flags(tmp_path, capsys):
    assert rlhf_lab(["bench", "--stages", "--steps", "0", "--output", str(tmp_path / "x.json")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps must be at least 1, got 0" in err[0]
