"""The lab's GPT: model (plain PyTorch), transformers wrappers, tokenizer, Llama export.

Importing this package registers the model with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(dir)` works on any directory we saved.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .hf import GPTConfig, GPTForCausalLM, GPTForSequenceClassification, GPTModel
from .tokenizer import load_tokenizer, train_tokenizer

AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModel.register(GPTConfig, GPTModel, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(GPTConfig, GPTForSequenceClassification, exist_ok=True)

__all__ = [
    "GPTConfig",
    "GPTModel",
    "GPTForCausalLM",
    "GPTForSequenceClassification",
    "train_tokenizer",
    "load_tokenizer",
]
