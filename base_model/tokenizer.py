"""Byte-level BPE tokenizer trained from scratch, with the lab's chat template.

Special tokens (single ids, in this order from id 0):
  <|pad|>        padding
  <|endoftext|>  bos; separates pretraining documents
  <|system|> <|user|> <|assistant|>   start of a turn
  <|end|>        end of turn; this is eos, so `generate` and TRL stop at the end of a turn

A conversation renders as `<|role|>\\n{content}<|end|>\\n` per turn. The assistant's content and its
`<|end|>` sit inside `{% generation %}` so `assistant_only_loss` trains on exactly those tokens.

Padding side is left: batched `generate` needs the prompts to end at the same column. TRL's
collators pad on their own and ignore this setting.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

PAD, BOS, EOS = "<|pad|>", "<|endoftext|>", "<|end|>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [PAD, BOS, "<|system|>", "<|user|>", "<|assistant|>", EOS]

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('unknown role ' + message['role'] + '; expected system, user or assistant') }}"
    "{%- endif %}"
    "{{- '<|' + message['role'] + '|>\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|end|>' }}{% endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + '<|end|>' }}"
    "{%- endif %}"
    "{{- '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (specials included) on `texts`."""
    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size must be at least {min_size} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any UTF-8 text round-trips
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=SPECIAL_TOKENS[2:5],
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def load_tokenizer(path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with `save_pretrained` (a model directory or a tokenizer directory)."""
    return AutoTokenizer.from_pretrained(str(path))
