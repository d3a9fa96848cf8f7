"""Export a trained GPT as transformers' `LlamaForCausalLM`: same arithmetic, same weight names.

    rlhf-lab export --to llama RUN_DIR OUT_DIR

The output directory needs nothing from this lab to load: `AutoModelForCausalLM.from_pretrained`
and every inference engine that reads Llama checkpoints can use it.
"""

import argparse
import json
from pathlib import Path

from recipes.core.errors import UserError
from recipes.core.model_dirs import check_model_dir

from .hf import GPTForCausalLM


def _model_dir(path) -> Path:
    """A model directory (config.json of ours) or a run directory holding one in `model/`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; expected a run directory or a model directory saved by rlhf-lab")
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        path = path / "model"
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{path}: no config.json; expected a model directory saved by rlhf-lab (or a run directory with model/)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{config}: not valid JSON ({e}); expected a transformers config") from None
    if model_type != "rlhf_lab_gpt":
        raise UserError(f"{config}: model_type is {model_type!r}; expected 'rlhf_lab_gpt' (a model trained by rlhf-lab)")
    return check_model_dir(path, "RUN_DIR", "policy")  # a reward model would leave as a LlamaForCausalLM


def llama_config(config):
    """The `LlamaConfig` that computes exactly what our `GPTConfig` computes."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.initializer_range,
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
    )


def to_llama(model):
    """A `LlamaForCausalLM` holding a copy of our GPTForCausalLM's weights (same logits)."""
    from transformers import LlamaForCausalLM

    llama = LlamaForCausalLM(llama_config(model.config)).to(dtype=model.dtype, device=model.device)
    # Same module names, so the state dict copies as is (lm_head is tied to embed_tokens in both).
    llama.load_state_dict(model.state_dict(), strict=True)
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    return llama


def export_llama(model_dir, out_dir) -> Path:
    """Write `LlamaForCausalLM` weights, tokenizer and generation config for our model into out_dir."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    src, out = _model_dir(model_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; expected a new or empty output directory")
    if not (src / "tokenizer_config.json").is_file():
        raise UserError(f"{src}: no tokenizer_config.json; expected the tokenizer saved next to the model")

    ours = GPTForCausalLM.from_pretrained(src, dtype=torch.float32)
    llama = to_llama(ours)
    config = llama.config
    llama.generation_config = GenerationConfig(**ours.generation_config.to_diff_dict())  # keeps sampling defaults
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(llama.generation_config, key, None) is None:
            setattr(llama.generation_config, key, getattr(config, key))
    out.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def cli(argv: list[str]) -> int:
    """`rlhf-lab export --to llama RUN_DIR OUT_DIR` (argv: the arguments after `export`)."""
    parser = argparse.ArgumentParser(
        prog="rlhf-lab export", description="Convert a trained model into a standard transformers format."
    )
    parser.add_argument("--to", required=True, choices=["llama"], help="target format")
    parser.add_argument("run_dir", help="a run directory (with model/) or a model directory")
    parser.add_argument("out_dir", help="where to write the converted model (new or empty)")
    args = parser.parse_args(argv)
    out = export_llama(args.run_dir, args.out_dir)
    print(f"exported {args.run_dir} as LlamaForCausalLM to {out}")
    return 0
