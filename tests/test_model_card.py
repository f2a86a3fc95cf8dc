"""Model cards of saved adapters: the Hub's front matter, the training facts, retrieval."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from huggingface_hub import ModelCard

from midalign.modeling.loading import load_model
from midalign.training.config import TrainConfig
from midalign.training.model_card import add_retrieval, training_card, write_card


def _config() -> TrainConfig:
    c = TrainConfig()
    c.model.name = "meta-llama/Llama-3.1-8B-Instruct"
    c.data.task_data = "train.jsonl"
    c.data.align_data = "tatoeba:data/tatoeba"
    c.align.schedule = "alternate"
    c.align.layers = "middle"
    c.align.temperature = 0.1
    c.align.normalize = "standardize"
    c.align.stats = "base"
    return c


def test_training_card_front_matter_and_facts(tmp_path: Path) -> None:
    text = training_card(
        _config(), [16], ["arb_Arab", "eng_Latn"], {"cym_Latn": 551, "jpn_Jpan": 902}, 240, 60
    )
    write_card(tmp_path, text)
    card = ModelCard.load(tmp_path / "README.md")  # the Hub's own parser
    assert card.data.library_name == "peft"
    assert card.data.base_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert card.data.language == ["arb", "cym", "eng", "jpn"]
    assert "midalign" in card.data.tags
    body = card.text
    assert "InfoNCE at layer(s) 16 (`middle`), τ = 0.1" in body
    assert "normalisation standardize (base statistics)" in body
    assert "cym_Latn 551, jpn_Jpan 902" in body
    assert "240 examples in arb_Arab, eng_Latn" in body and "60 optimizer steps" in body


def test_a_local_base_model_is_named_in_the_text_not_as_a_hub_id(tmp_path: Path) -> None:
    c = _config()
    c.model.name = str(tmp_path)  # a folder that exists: not a hub id
    c.align.schedule = "task"
    write_card(tmp_path, training_card(c, None, [], {}, 10, 4))
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model is None and str(tmp_path) in card.text
    assert "InfoNCE" not in card.text  # SFT: no alignment line


def test_the_default_model_s_card_loads_it_with_midalign(tmp_path: Path) -> None:
    """ "default" is no name transformers knows: the card's Use snippet loads the adapter with
    midalign's load_model, with arguments load_model takes; a hub id keeps transformers'."""
    c = _config()
    c.model.name = "default"
    text = training_card(c, [9], [], {}, 10, 4)
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert 'from_pretrained("default")' not in text
    call = ast.parse(code).body[-1].value  # model, tokenizer = load_model(...)
    assert call.func.id == "load_model"
    args = [a.value for a in call.args]
    kwargs = {k.arg: k.value.value for k in call.keywords}
    inspect.signature(load_model).bind(*args, **kwargs)
    assert args == ["default"] and kwargs == {"adapter": "path/to/this/folder"}
    hub = training_card(_config(), [9], [], {}, 10, 4)
    assert 'AutoModelForCausalLM.from_pretrained("meta-llama/Llama-3.1-8B-Instruct")' in hub


def test_retrieval_is_added_then_replaced(tmp_path: Path) -> None:
    add_retrieval(tmp_path, 9, "none", {"cym": 0.1}, {"cym": 0.2})  # no card: nothing written
    assert not (tmp_path / "README.md").exists()
    write_card(tmp_path, training_card(_config(), [9], [], {}, 10, 4))
    add_retrieval(tmp_path, 9, "none", {"cym": 0.1, "jpn": 0.3}, {"cym": 0.2, "jpn": 0.25})
    add_retrieval(tmp_path, 9, "standardize", {"cym": 0.5, "jpn": 0.3}, {"cym": 0.6, "jpn": 0.4})
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Retrieval at layer 9") == 1
    assert "| cym | 50.0 | 60.0 |" in text and "| cym | 10.0 |" not in text
    assert "`normalize: standardize`" in text
