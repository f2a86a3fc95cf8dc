"""The Python API examples of docs/api.md, run on a tiny random Gemma 3: the probe's numbers are
retrieval's on the states recomputed by hand, and the Trainer example logs the alignment loss
of its first step as computed by hand and moves the LoRA weights."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_same_numbers

import midalign
from midalign.data.pairs import encode_pairs
from midalign.errors import InputError
from midalign.modeling.forward import pooled_states
from midalign.probe.embeddings import special_token_ids
from midalign.probe.retrieval import all_pairs_accuracy
from midalign.training.losses import info_nce

API_PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _examples() -> list[str]:
    """The Python blocks of docs/api.md, the "Python API" page, in order."""
    return re.findall(r"```python\n(.*?)```", API_PAGE.read_text(), re.S)


@pytest.fixture
def probed(tiny_model_dir, tmp_path, monkeypatch) -> dict:
    """The namespace of the probe example, run on the tiny model folder for "default"."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(_examples()[0].replace('"default"', repr(str(tiny_model_dir))), namespace)
    return namespace


def test_import_is_cheap_and_names_load_on_first_use():
    code = "import sys, midalign; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert set(midalign.__all__) <= set(dir(midalign))
    assert midalign.probe_model.__module__ == "midalign.probe.embeddings"
    assert midalign.AlignmentTrainer.__module__ == "midalign.training.trainer"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        midalign.nothing  # noqa: B018


def test_probe_example_gives_retrievals_accuracy_on_hand_pooled_states(probed):
    model, tokenizer, sentences, probe = (
        probed[k] for k in ("model", "tokenizer", "sentences", "probe")
    )
    langs = list(sentences)
    assert probe.layers == [0, 1, 2, 3, 4] and probe.num_layers == 4
    assert probe.corpus.pairs == [(a, b) for a in langs for b in langs if a != b]

    # the pooled states, one sentence per forward through the whole model: mean of the content
    # tokens' hidden states (BOS excluded), HF's hidden_states[l]
    special = special_token_ids(tokenizer)
    for lang in langs:
        expected = []
        for text in sentences[lang]:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            content = ~torch.isin(ids[0], torch.tensor(special))
            expected.append(torch.stack([h[0, content].mean(0) for h in hidden]))  # [L+1, d]
        assert_same_numbers(probe.embeddings[lang], torch.stack(expected, 1), torch.float32)

    # the accuracies are all_pairs_accuracy's on those states, pair by pair
    emb = torch.stack([probe.embeddings[lang] for lang in langs], 1)  # [L+1, M, N, d]
    acc = all_pairs_accuracy(emb, k=2)  # [L+1, M, M]
    for p, (src, tgt) in enumerate(probe.corpus.pairs):
        assert torch.equal(probe.acc[:, p], acc[:, langs.index(src), langs.index(tgt)])
    for li, layer in enumerate(probe.layers):
        assert probe.by_layer[layer] == pytest.approx(probe.acc[li].mean().item())
        assert all(abs(3 * a - round(3 * a)) < 1e-6 for a in probe.acc[li].tolist())  # of 3
    assert probe.by_layer[probe.summary["best_layer"]] == max(probe.by_layer.values())
    # every per-layer table is keyed as by_layer is: by the layer as an int
    for table in ("per_layer", "per_language", "pair_matrix"):
        assert list(probe.summary[table]) == list(probe.by_layer) == probe.layers
    assert list(probe.anisotropy) == probe.layers


def test_probe_refuses_sides_of_different_lengths(tiny_model_dir):
    model, tokenizer = midalign.load_model(str(tiny_model_dir))
    with pytest.raises(InputError, match="as many sentences"):
        midalign.probe_model(model, tokenizer, {"eng": ["a", "b"], "deu": ["a"]})


def test_trainer_example_logs_the_alignment_loss_and_moves_lora(probed):
    namespace = dict(probed)
    base = namespace["model"]
    exec(_examples()[1], namespace)
    trainer, tokenizer = namespace["trainer"], namespace["tokenizer"]
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["step"] for row in logged] == [1, 2]
    for row in logged:
        assert math.isfinite(row["task_loss"]) and math.isfinite(row["align_loss"])
    assert trainer.align.layers == [2]  # the middle of 4 layers
    assert trainer.align_position == 2  # one alignment micro-batch per task micro-batch

    # step 1's alignment micro-batch ran first, on the initial adapter (LoRA B = 0: the base
    # model): InfoNCE at τ 0.1 over the pre-norm layer-2 states of the stream's first batch
    _, pairs = trainer.align.stream.batch(0)
    batch = encode_pairs(tokenizer, pairs, 128)
    with torch.no_grad(), trainer.model.disable_adapter():
        pooled = pooled_states(
            base,
            batch["input_ids"],
            batch["attention_mask"],
            [2],
            "mean",
            special_token_ids(tokenizer),
            final_norm=False,
        )
    b = len(pairs)
    expected = info_nce(pooled[:, :b], pooled[:, b:], 0.1)
    assert logged[0]["align_loss"] == pytest.approx(expected.item(), rel=1e-5)

    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # every adapted layer moved
