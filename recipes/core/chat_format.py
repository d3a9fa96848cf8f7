"""Any causal LM's tokenizer made ready for the lab's chat stages: template, end of turn, padding, loss masks.

The lab's own tokenizer already has all of this. A model people bring (a hub name or a `save_pretrained`
folder of a SmolLM-, Qwen- or Llama-class model) may not:

- **No chat template** (a base model): the lab gives it `DEFAULT_CHAT_TEMPLATE` below, plain-text role
  headers and the tokenizer's own end-of-sequence token closing every turn, so no token is added and the
  embeddings keep their size. Saved with the model, so every later stage and any inference engine reads it.
- **End of turn.** Every stage stops sampling at `tokenizer.eos_token` and the gold reward and the missing-end
  penalty read it. Chat templates often close a turn with another token than the tokenizer's end of
  sequence (ChatML's `<|im_end|>` beside `<|endoftext|>`, Llama 3's `<|eot_id|>`): the token the template
  writes after an assistant answer becomes the tokenizer's `eos_token` (and the model's generation config's).
- **Padding**: a tokenizer without a pad token pads with its old end-of-sequence token when that is not the end
  of turn, else with its unknown token, else with the end of turn (as TRL does). Not with the end of turn where
  it can be helped: a reward model reads its score at the last token that is not padding, and an answer that
  ended its turn would look cut off. The lab's own batches carry attention masks and pad on the side each use
  needs. `match_model` puts the same ids into a model's config and generation config.
- **Assistant-only loss** needs `{% generation %}` markers, which most templates lack; TRL patches the templates
  it knows and refuses the rest. For those, `assistant_masks` marks each assistant turn's tokens by rendering
  the conversation up to that turn (with the assistant header) and through it: the tokens in between are the
  answer and its end of turn. That holds for any template that renders a conversation's prefix as a prefix of
  the whole; one that does not stops with a line saying so.
"""

from __future__ import annotations

from recipes.core.errors import UserError

# For base models, which have no chat template: role headers in plain text, the end-of-sequence token closing
# each turn (inside the generation block, so assistant-only loss trains the model to stop).
DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '### Assistant:\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n\n' }}"
    "{%- else -%}"
    "{{ '### ' + message['role'] | capitalize + ':\n' + message['content'] + '\n\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif -%}"
)
_PROBE = [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "ANSWER-7f3e"}]


def load_chat_tokenizer(name_or_path, key: str = "model_name_or_path"):
    """The tokenizer of a saved model folder or hub model, prepared by `prepare_chat_tokenizer`."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as err:
        raise UserError(f"key '{key}': cannot load a tokenizer from {name_or_path} "
                        f"({str(err).splitlines()[0]})") from None
    return prepare_chat_tokenizer(tokenizer, str(name_or_path), key=key)


def prepare_chat_tokenizer(tokenizer, source: str = "the model", *, key: str = "model_name_or_path"):
    """`tokenizer` with a chat template, its end-of-turn token as `eos_token` and a pad token (see the module
    doc); changes nothing on a tokenizer that has them (the lab's own, or one this function prepared)."""
    if not tokenizer.chat_template:
        if tokenizer.eos_token is None:
            raise UserError(f"key '{key}': the tokenizer of {source} has neither a chat template nor an "
                            "end-of-sequence token to close a turn with")
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        print(f"{source}: its tokenizer has no chat template; using the lab's plain one "
            f"('### User:' / '### Assistant:' headers, {tokenizer.eos_token} ending each turn)")
    end = end_of_turn_token(tokenizer, source, key)
    if tokenizer.pad_token is None:
        spare = [t for t in (tokenizer.eos_token, tokenizer.unk_token) if t is not None and t != end]
        tokenizer.pad_token = spare[0] if spare else end
    if end != tokenizer.eos_token:
        print(f"{source}: the chat template ends a turn with {end}, which becomes the end-of-sequence token "
            f"(was {tokenizer.eos_token})")
        tokenizer.eos_token = end
    return tokenizer


def match_model(model, tokenizer):
    """The model's config and generation config end sequences and pad where the prepared tokenizer does, so what
    a stage saves stops at the template's end of turn in any inference engine too."""
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def end_of_turn_token(tokenizer, source: str = "the model", key: str = "model_name_or_path") -> str:
    """The special token the chat template writes right after an assistant answer."""
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception as err:  # jinja errors of every kind: the template is the user's
        raise UserError(f"key '{key}': the chat template of {source} cannot render a user and an assistant "
                        f"turn ({str(err).splitlines()[0]})") from None
    after = text[text.index(_PROBE[1]["content"]) + len(_PROBE[1]["content"]):].lstrip(" ")
    specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    found = [token for token in specials if token and after.startswith(token)]
    if not found:
        raise UserError(f"key '{key}': the chat template of {source} ends an assistant turn with "
                        f"{after[:20]!r}, not a special token; a model needs one to end its turn")
    return max(found, key=len)


def needs_lab_masks(tokenizer) -> bool:
    """True when assistant-only loss needs `assistant_masks`: the template has no `{% generation %}` markers and
    TRL has no patched version of it."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return False
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        return True
    return False


def assistant_masks(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids of the conversation, 1 on each assistant answer and its end of turn, else 0)."""

    def render(turns, **kwargs):
        return tokenizer.apply_chat_template(turns, tokenize=True, return_dict=False, **kwargs)

    ids = render(messages)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:i], add_generation_prompt=True), render(messages[:i + 1])
        if ids[:len(before)] != before or ids[:len(through)] != through:
            raise ValueError(f"the chat template does not render turn {i + 1} of a conversation as a prefix of "
                             "the whole conversation")
        end = len(through)
        answer = ids[len(before):end]
        if tokenizer.eos_token_id in answer:  # what follows the end of turn (a newline) is no one's answer
            end = len(before) + answer.index(tokenizer.eos_token_id) + 1
        mask[len(before):end] = [1] * (end - len(before))
    return ids, mask


def with_assistant_masks(dataset, tokenizer, name: str):
    """A `messages` dataset as `input_ids` and `assistant_masks` (TRL builds the labels from the masks); a
    conversation the template cannot mark is named by its first words (rows may have been dropped before)."""
    rows = {"input_ids": [], "assistant_masks": []}
    for messages in dataset["messages"]:
        try:
            ids, mask = assistant_masks(tokenizer, messages)
        except ValueError as err:
            raise UserError(f"{name}: the conversation starting {messages[0]['content'][:40]!r}: {err}; set "
                            "assistant_only_loss: false, or give the tokenizer a template with {% generation %} "
                            "markers") from None
        rows["input_ids"].append(ids)
        rows["assistant_masks"].append(mask)
    import datasets

    return datasets.Dataset.from_dict(rows)
