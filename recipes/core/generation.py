"""Answer chat prompts with a causal LM: the one generation path evaluations and samplers share.

Prompts are rendered with the tokenizer's chat template (plus the assistant header), left-padded
into batches, and generated until end of turn or `max_new_tokens`. Each answer records whether the
model ended its turn itself, which the gold reward needs and the decoded text cannot show.

Our own GPTForCausalLM's `generate` runs these plain calls on the lab's fast sampler
(`base_model/sampler.py`: same tokens greedily, same distribution when sampling, several times
faster on a CPU); any other model (a PEFT-wrapped policy, a foreign checkpoint) on transformers' own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Answer:
    text: str  # decoded, special tokens removed, cut at the end of turn
    ended: bool  # the model produced its end-of-turn token within the budget
    num_tokens: int  # tokens generated, the end-of-turn token included
    token_ids: list[int] = field(default_factory=list)  # those tokens


def as_messages(prompt) -> list[dict]:
    """A prompt as a conversation: a plain string becomes one user turn."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def distinct(prompts, limit: int | None = None) -> list:
    """The first `limit` distinct prompts (strings or message lists), in order."""
    unique, seen = [], set()
    for prompt in prompts:
        key = repr(prompt)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique[:limit]


def render_prompts(tokenizer, prompts) -> list[list[int]]:
    return [
        tokenizer.apply_chat_template(as_messages(p), add_generation_prompt=True, tokenize=True, return_dict=False)
        for p in prompts
    ]


@torch.no_grad()
def generate_answers(model, tokenizer, prompts, *, max_new_tokens: int = 64, do_sample: bool = False,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, batch_size: int = 32,
                     seed: int = 0, cache_implementation: str | None = None) -> list[Answer]:
    """One answer per prompt; sampling is seeded and leaves the caller's RNG state untouched.
    `cache_implementation`: transformers' key; "static" takes the lab's compiled decode on its GPT."""
    was_training = model.training
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rendered = render_prompts(tokenizer, prompts)
    answers: list[Answer] = []
    # top_k=0 turns top-k off; None would let transformers 5 fall back to its default of 50.
    sampling = dict(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p) if do_sample \
        else dict(do_sample=False)
    if cache_implementation is not None:
        sampling["cache_implementation"] = cache_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(rendered), batch_size):
            rows = rendered[start:start + batch_size]
            width = max(map(len, rows))
            input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=model.device)
            attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos, pad_token_id=pad, **sampling)
            for new in out[:, width:].tolist():
                ended = eos in new
                new = new[:new.index(eos) + 1] if ended else new
                answers.append(Answer(tokenizer.decode(new, skip_special_tokens=True).strip(), ended, len(new), new))
    model.train(was_training)
    return answers
