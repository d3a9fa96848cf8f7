"""The GPT as a first-class transformers model: config, backbone, causal LM, sequence classifier.

The arithmetic lives in `model.py`; this file adds what transformers, TRL and PEFT expect:
`PretrainedConfig` with Llama field names, `PreTrainedModel` (save/load, init, gradient
checkpointing), `GenerationMixin`, the `Cache` protocol and `ModelOutput`s.
Registration with the Auto classes happens in `base_model/__init__.py`.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from .generate_route import generate_fast
from .model import (
    Block,
    RMSNorm,
    attention_mask_4d,
    positions_from_mask,
    residual_std,
    rope_cos_sin,
)

# transformers 5.24 renamed the KV cache, argument and output field alike, from `past_key_values` to `cache`;
# its `generate` passes `cache=` and reads `outputs["cache"]`, while 5.0-5.23 use only `past_key_values`. The
# models here take either name and return the cache under the field this release declares, so `generate`
# finds it on every 5.x (a cache passed under a name the forward ignores would be dropped without a word).
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _one_cache(cache, past_key_values):
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
    return cache if cache is not None else past_key_values


class GPTConfig(PretrainedConfig):
    """Hyper-parameters, named as in `LlamaConfig` (transformers 5 configs are dataclasses)."""

    model_type = "rlhf_lab_gpt"
    auto_map = {}  # TRL reads `config.auto_map`; None would break it
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int | None = None  # default: ~8/3 * hidden_size, rounded up to a multiple of 32
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None  # default: num_attention_heads (no grouping)
    head_dim: int | None = None  # default: hidden_size // num_attention_heads
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = -(-(8 * self.hidden_size // 3) // 32) * 32
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        super().__post_init__(**kwargs)


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True  # we always use torch's scaled_dot_product_attention

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_proj", False):
                std = residual_std(self.config)
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


class GPTModel(GPTPreTrainedModel):
    """Token embeddings -> N pre-norm blocks -> final RMSNorm. Returns `last_hidden_state` after the norm."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([Block(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # flipped by gradient_checkpointing_enable()
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_hidden_states=None,
        return_dict=None,
        past_key_values=None,
        **kwargs,
    ):
        cache = _one_cache(cache, past_key_values)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        B, T, _ = x.shape
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # the recomputation in backward would write the cache twice
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        past_len = cache.get_seq_length() if cache is not None else 0

        if attention_mask is not None and attention_mask.shape[-1] < past_len + T:  # mask given for new tokens only
            ones = attention_mask.new_ones(B, past_len + T - attention_mask.shape[-1])
            attention_mask = torch.cat([ones, attention_mask], dim=-1)
        if attention_mask is not None and past_len == 0 and bool(attention_mask.all()):
            attention_mask = None  # nothing padded: keep SDPA's fast causal path
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask, past_len, T)
            else:
                position_ids = torch.arange(past_len, past_len + T, device=x.device).expand(B, T)
        # No padding and no cache: SDPA's causal fast path. Otherwise an explicit boolean mask.
        if attention_mask is None and past_len == 0:
            mask = None
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, past_len + T, dtype=torch.long, device=x.device)
            mask = attention_mask_4d(attention_mask, T, past_len)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)

        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        hidden_states = []
        for layer in self.layers:
            if output_hidden_states:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer.__call__, x, cos, sin, mask, None)
            else:
                x = layer(x, cos, sin, mask, cache)
        x = self.norm(x)
        if output_hidden_states:
            hidden_states.append(x)  # as in Llama: the last entry is after the final norm
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            **{CACHE_FIELD: cache},
        )

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """Backbone + language-model head tied to the token embeddings."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    takes_lab_sampler = True  # base_model/sampler.py's fast path (fast_path_ok reads this class's own mark)

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.model = GPTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers' `generate`, except that plain greedy or sampled decoding (what TRL's GRPO and
        RLOO ask for) runs on the lab's sampler: same tokens, same distribution, several times faster
        on a CPU. See `generate_route.generate_fast` for what counts as plain."""
        out = generate_fast(self, inputs, generation_config, kwargs)
        return out if out is not None else super().generate(inputs, generation_config, **kwargs)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        logits_to_keep=0,
        past_key_values=None,
        **kwargs,
    ):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:  # generate only needs the last position
            h = h[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            h = h[:, logits_to_keep]
        logits = self.lm_head(h)  # (B, T, vocab)
        loss = None
        if labels is not None:  # next-token cross-entropy, -100 ignored
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=out.hidden_states, **{CACHE_FIELD: out.get(CACHE_FIELD)}
        )


class GPTForSequenceClassification(GPTPreTrainedModel):
    """Backbone + `score` head read at the last real token of each row (a reward model with num_labels=1)."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = GPTModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_hidden_states=None,
        past_key_values=None,
        **kwargs,
    ):
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=bool(use_cache),  # a score needs no cache unless asked for
            output_hidden_states=output_hidden_states,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, num_labels)
        B, T = logits.shape[:2]
        # Real tokens come from the attention mask, else from pad_token_id; the last real one is pooled.
        # Taking the highest real index works for left and right padding alike.
        if attention_mask is not None:
            real = attention_mask[:, -T:].bool()
        elif input_ids is not None and self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = torch.ones(B, T, dtype=torch.bool, device=logits.device)
        last = (real.long() * torch.arange(T, device=logits.device)).argmax(-1)  # (B,)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, num_labels)

        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(pooled.squeeze(-1), labels.to(pooled.dtype).view(-1))
            else:
                loss = F.cross_entropy(pooled, labels.view(-1))
        return SequenceClassifierOutputWithPast(
            loss=loss, logits=pooled, hidden_states=out.hidden_states, **{CACHE_FIELD: out.get(CACHE_FIELD)}
        )
