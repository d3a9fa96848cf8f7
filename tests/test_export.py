"""Exact export to LlamaForCausalLM, checked by a process that has never imported this lab."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import subprocess
import sys

import pytest
import torch

from base_model import GPTConfig, GPTForCausalLM, train_tokenizer
from base_model.export import cli, export_llama
from recipes.core.errors import UserError

# Runs in a fresh interpreter, from a directory where this lab is not importable.
CHECK = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out_dir, inputs = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(out_dir)
x = torch.tensor(inputs)
with torch.no_grad():
    logits = model(x).logits
    gen = model.generate(x, max_new_tokens=10, do_sample=False, eos_token_id=None)
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("base_model", "recipes", "reward", "alignment"))
print(json.dumps({
    "class": type(model).__name__, "logits": logits.tolist(), "generate": gen.tolist(), "our_modules": ours,
    "tokens": tok("the cat").input_ids, "eos": tok.eos_token,
}))
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory laid out as the stages write it: <run>/model/ with weights and tokenizer."""
    torch.manual_seed(0)
    tok = train_tokenizer(["the cat sat on the mat in the garden. 12 + 7 = 19"] * 40, 300)
    cfg = GPTConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, rope_theta=5000.0, rms_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = GPTForCausalLM(cfg).eval()
    with torch.no_grad():  # make every weight matter: norms away from 1, sharper logits
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
        model.model.embed_tokens.weight.mul_(20)
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run / "model")
    tok.save_pretrained(run / "model")
    return run


def test_llama_export_is_exact(run_dir, tmp_path):
    out = tmp_path / "llama"
    assert cli(["--to", "llama", str(run_dir), str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    gen_config = json.loads((out / "generation_config.json").read_text())
    assert (gen_config["eos_token_id"], gen_config["pad_token_id"]) == (5, 0)  # stop at <|end|>

    ours = GPTForCausalLM.from_pretrained(run_dir / "model").eval()
    x = torch.randint(6, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_logits = ours(x).logits
        ref_gen = ours.generate(x, max_new_tokens=10, do_sample=False, eos_token_id=None)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(out), json.dumps(x.tolist())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["class"] == "LlamaForCausalLM"
    assert res["our_modules"] == []  # transformers alone loaded it
    diff = (torch.tensor(res["logits"]) - ref_logits).abs().max().item()
    assert diff < 1e-4, diff
    assert ref_logits.std() > 0.1  # logits that are not all alike, so the comparison means something
    assert res["generate"] == ref_gen.tolist()
    assert res["eos"] == "<|end|>"


def test_export_refuses_bad_input(run_dir, tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        export_llama(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty.*no config.json"):
        export_llama(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="model_type is 'gpt2'; expected 'rlhf_lab_gpt'"):
        export_llama(tmp_path / "other", tmp_path / "out")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        export_llama(run_dir, tmp_path / "taken")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit):  # argparse: only llama is a known target
        cli(["--to", "gguf", str(run_dir), str(tmp_path / "out")])
