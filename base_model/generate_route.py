"""`GPTForCausalLM.generate`'s route to the lab's samplers: which calls they can answer, and which sampler.

A call that asks for nothing beyond plain greedy or sampled decoding (the settings in `_HANDLED`; TRL's GRPO and
RLOO, `generate_answers` for PPO, best-of-n and every evaluation make such calls) goes to the eager sampler
(`sampler.py`), or to the compiled decode step (`static_decode.py`) when it sets `cache_implementation="static"`;
anything else (beams, penalties, scores, another cache) returns None, and the model runs transformers' own
`generate`.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from . import sampler, static_decode

# generate() settings the sampler implements. Any other setting that differs from transformers'
# defaults (beams, penalties, min_p, logits processors, streamers, scores in the output, several
# sequences per prompt, ...) sends the call to transformers' own generate.
_HANDLED = {"max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
            "pad_token_id", "bos_token_id", "use_cache", "disable_compile", "cache_implementation",
            "output_attentions", "output_hidden_states", "_from_model_config", "transformers_version"}


def generate_fast(model, inputs, generation_config, kwargs: dict):
    """What `model.generate(inputs, generation_config, **kwargs)` returns, from the fast sampler; or None
    when the call needs something only transformers' generate does (the caller then runs that)."""
    if not sampler.fast_path_ok(model) or kwargs.get("use_cache") is False:
        return None
    config, model_kwargs = model._prepare_generation_config(generation_config, **kwargs)
    input_ids = model_kwargs.pop("input_ids", inputs)
    attention_mask = model_kwargs.pop("attention_mask", None)
    model_kwargs.pop("use_cache", None)
    if model_kwargs or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or \
            config.cache_implementation not in (None, "static"):
        return None
    defaults = GenerationConfig()
    defaults.update(**model.generation_config._get_default_generation_params(), defaults_only=True)
    defaults = defaults.to_dict()
    for key, value in config.to_dict().items():
        if key not in _HANDLED and value != defaults.get(key) and (value or defaults.get(key)):
            return None
    if config.max_new_tokens is not None:
        max_new_tokens = config.max_new_tokens
    else:
        max_new_tokens = config.max_length - input_ids.shape[1]
    eos = config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else (
        (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0)  # as generate: eos stands in for pad
    # cache_implementation "static": transformers' name for a compiled decode over a static cache. Looked up on
    # the modules at call time, so a caller that wraps sampler.sample (stage_bench counts its calls) sees them.
    decode = static_decode.sample_static if config.cache_implementation == "static" else sampler.sample
    return decode(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos,
                  pad_token_id=pad, do_sample=bool(config.do_sample), temperature=config.temperature or 1.0,
                  top_k=config.top_k or 0, top_p=1.0 if config.top_p is None else config.top_p)
