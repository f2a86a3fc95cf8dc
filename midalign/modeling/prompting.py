"""How an instruction example becomes token ids: one route for training and for generation.

One route, so that a model is always asked a question the way it was taught to answer it.

With a chat template (Llama 3 Instruct, Qwen 2.5 Instruct) the conversation is rendered by the
tokenizer's own template; a template that rejects the system role (Gemma's) gets the system text
folded into the user turn. Without one (base models such as the offline Gemma 3 270M) a plain
template is used::

    <bos>{system}\\n\\nUser: {prompt}\\nAssistant: {response}<eos>

The response part, and only it, carries labels; prompt tokens are masked with -100.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)


def _messages(prompt: str, system: str | None, fold_system: bool) -> list[dict[str, str]]:
    if system and fold_system:
        return [{"role": "user", "content": f"{system}\n\n{prompt}"}]
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": prompt}]


def _render_chat(
    tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None, response: str | None
) -> str:
    """The chat template's text for the prompt (and, if given, the answer)."""
    for fold in (False, True):
        messages = _messages(prompt, system, fold)
        if response is not None:
            messages.append({"role": "assistant", "content": response})
        try:
            return tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=response is None
            )
        except Exception:  # jinja2 TemplateError: e.g. "System role not supported"
            if fold or not system:
                raise
    raise AssertionError("unreachable")


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """The text a model is given before it answers (special tokens written out if any)."""
    if tokenizer.chat_template:
        return _render_chat(tokenizer, prompt, system, None)
    head = f"{system}\n\n" if system else ""
    return f"{head}User: {prompt}\nAssistant: "


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None
) -> list[int]:
    """Token ids of the prompt, ready for generation (BOS included exactly once)."""
    text = prompt_text(tokenizer, prompt, system)
    # A chat template writes BOS into its text itself; the plain template relies on the tokenizer.
    return tokenizer(text, add_special_tokens=not tokenizer.chat_template)["input_ids"]


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, response: str, system: str | None = None
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a whole example; labels are -100 on the prompt.

    Prompt and answer are tokenised separately and concatenated, so the prompt ids are exactly
    those :func:`encode_prompt` gives at generation time (no merge across the boundary).
    """
    prompt_ids = encode_prompt(tokenizer, prompt, system)
    if tokenizer.chat_template:
        full = _render_chat(tokenizer, prompt, system, response)
        head = prompt_text(tokenizer, prompt, system)
        completion = full[len(head) :] if full.startswith(head) else response
    else:
        completion = response + (tokenizer.eos_token or "")
    response_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not tokenizer.chat_template and tokenizer.eos_token_id is not None:
        if not response_ids or response_ids[-1] != tokenizer.eos_token_id:
            response_ids.append(tokenizer.eos_token_id)
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids
