"""Prompt formatting shared by training and generation: plain template and chat templates."""

from __future__ import annotations

from conftest import tiny_tokenizer

from midalign.modeling.prompting import IGNORE_INDEX, encode_example, encode_prompt, prompt_text

# A Llama-3-like template: BOS written by the template, a role header per turn, an end-of-turn.
CHAT = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
# A Gemma-like template that refuses a system turn.
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_plain_template_text_and_labels() -> None:
    tok = tiny_tokenizer()
    assert prompt_text(tok, "a b", system="the") == "the\n\nUser: a b\nAssistant: "
    ids, labels = encode_example(tok, "a b", "c", system="the")
    prompt = encode_prompt(tok, "a b", system="the")
    assert ids[: len(prompt)] == prompt and prompt[0] == tok.bos_token_id
    assert prompt.count(tok.bos_token_id) == 1
    # the answer is "c" then EOS; only those two tokens carry labels
    assert ids[len(prompt) :] == [tok.convert_tokens_to_ids("c"), tok.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]


def test_chat_template_bos_once_and_end_of_turn_learned() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = CHAT
    prompt = encode_prompt(tok, "a", system="b")
    assert prompt.count(tok.bos_token_id) == 1
    ids, labels = encode_example(tok, "a", "c", system="b")
    assert ids[: len(prompt)] == prompt
    answer = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert answer == ids[len(prompt) :]
    # the end-of-turn token is part of the answer
    assert tok.convert_ids_to_tokens(answer) == ["c", "<eos>"]


def test_system_folded_into_user_when_template_refuses_it() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = NO_SYSTEM
    assert prompt_text(tok, "a", system="b") == "<user>b\n\na<assistant>"
    assert prompt_text(tok, "a") == "<user>a<assistant>"
