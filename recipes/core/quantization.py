"""QLoRA: the model a stage trains loaded in 4 bits (bitsandbytes NF4) under LoRA adapters, saved full-precision.

`load_in_4bit: true` (with `use_peft: true`; the keys are TRL's ModelConfig names) quantizes the frozen base
weights as they load, so a model several times the memory fits; only the adapters train, in bf16 (Dettmers et
al. 2023's recipe: NF4 storage, bf16 compute; TRL casts the trainable weights of a 4-bit model to bf16 too).
bitsandbytes runs it on CUDA GPUs and, since 0.46, on CPUs. What a stage saves is not a 4-bit model: `merged` reads the base again at full
precision and merges the trained adapters into it, so `model/` loads like any other and every later stage
starts from exact weights, not from a quantized copy.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from recipes.core.errors import UserError


def check(config) -> None:
    """`load_in_4bit` needs LoRA and bitsandbytes: one line naming the key otherwise."""
    if not getattr(config, "load_in_4bit", False):
        return
    if not config.use_peft:
        raise UserError("key 'load_in_4bit': a 4-bit base cannot be trained itself; set use_peft: true (QLoRA)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("key 'load_in_4bit': needs bitsandbytes (pip install bitsandbytes)") from None


def load_kwargs(config) -> dict:
    """from_pretrained's keyword arguments for the trained model: a 4-bit quantization config on this process's
    device with `load_in_4bit`, else none."""
    if not getattr(config, "load_in_4bit", False):
        return {}
    check(config)
    import torch
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16  # QLoRA's recipe, and what TRL casts the trainable weights to under a 4-bit base
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.bnb_4bit_quant_type,
                                      bnb_4bit_use_double_quant=config.use_bnb_nested_quant,
                                      bnb_4bit_compute_dtype=compute)
    device = PartialState().device
    return {"quantization_config": quantization, "device_map": {"": device}, "dtype": compute}


def is_quantized(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_quantized", False))


def merged(model, source: Path | str | None = None, **load_kwargs):
    """The model to save: LoRA adapters merged into the weights (a plain model is returned as it is). A 4-bit
    base is read again at full precision from `source` (default: where it was loaded from), with `load_kwargs`
    (e.g. num_labels), and the trained adapters are merged into that, so nothing saved carries the
    quantization's rounding."""
    if not hasattr(model, "merge_and_unload"):
        return model
    if not is_quantized(model):
        return model.merge_and_unload()
    from peft import PeftModel

    with tempfile.TemporaryDirectory() as adapters:
        model.save_pretrained(adapters)  # the adapters (and modules_to_save) only
        quantized = model.get_base_model()
        base = type(quantized).from_pretrained(str(source or quantized.config._name_or_path), **load_kwargs)
        for key in ("eos_token_id", "pad_token_id", "bos_token_id"):  # as the stage set them (chat_format)
            setattr(base.config, key, getattr(quantized.config, key, None))
        if getattr(quantized, "generation_config", None) is not None:
            base.generation_config = quantized.generation_config
        return PeftModel.from_pretrained(base, adapters).merge_and_unload()
