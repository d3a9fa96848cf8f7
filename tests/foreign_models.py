"""Tiny transformers models that are not the lab's GPT, each with a tokenizer of its own, built offline for tests.

- `build_qwen`: a `Qwen2ForCausalLM` with a byte-level BPE tokenizer and a plain ChatML template (no
  `{% generation %}` markers, not one TRL knows how to patch), `<|endoftext|>` as eos and pad, `<|im_end|>` ending
  each turn: the case that stopped SFT with TRL's "chat template is not training-compatible".
- `build_llama_base`: a `LlamaForCausalLM` base model, `<s>`/`</s>`, no chat template and no pad token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def world_texts() -> list[str]:
    """Text to train the tokenizers on: the real-shape recipe's stories and conversations."""
    data = REPO / "recipes" / "realshape-cpu" / "data"
    texts = [json.loads(line)["text"] for line in (data / "stories" / "train.jsonl").read_text().splitlines()]
    for line in (data / "ultrachat" / "train_sft.jsonl").read_text().splitlines():
        texts += [m["content"] for m in json.loads(line)["messages"]]
    return texts


def _bpe(specials: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(world_texts(), trainer)
    return tokenizer


def build_qwen(out: Path, chat_template: str = CHATML) -> Path:
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]), eos_token="<|endoftext|>",
        pad_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_llama_base(out: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_bpe(["<s>", "</s>"]), bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
