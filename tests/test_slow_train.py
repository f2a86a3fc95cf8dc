"""20 steps of `alternate` on the default model pull translations together at the middle layer."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import shared_data

from midalign.config import TrainConfig
from midalign.data.pairs import load_pairs
from midalign.losses import info_nce
from midalign.models import load_model, num_layers
from midalign.probe import extract_embeddings
from midalign.retrieval import retrieval_accuracy
from midalign.train import read_log, train

LANGS = ["deu", "jpn", "swh"]


def _measure(model, tokenizer, pairs, layer):
    """Mean over languages of the x→English InfoNCE (τ 0.1) and cosine retrieval accuracy."""
    losses, accs = [], []
    for items in pairs.values():
        x = extract_embeddings(model, tokenizer, [a for a, _ in items], [layer], progress=False)[0]
        y = extract_embeddings(model, tokenizer, [b for _, b in items], [layer], progress=False)[0]
        losses.append(info_nce(x, y, 0.1).item())
        accs.append(retrieval_accuracy(x, y, margin="cosine"))
    return sum(losses) / len(losses), sum(accs) / len(accs)


@pytest.mark.slow
def test_alternate_lowers_alignment_loss_and_raises_mid_layer_retrieval(tmp_path):
    tatoeba = shared_data("tatoeba")
    sib = shared_data("sib200", "eng_Latn", "train.tsv")
    with sib.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[:40]
    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(
            json.dumps({"prompt": f"Topic of: {r['text']}", "response": r["category"]}) + "\n"
            for r in rows
        )
    )
    c = TrainConfig()
    c.data.task_data = str(task)
    c.data.max_length = 96
    c.data.align_data = f"tatoeba:{tatoeba}"
    c.data.align_langs = LANGS
    c.data.align_max_pairs = 200
    c.data.align_dev_pairs = 0
    c.align.batch_pairs = 8
    c.optim.batch_size = 4
    c.optim.gradient_accumulation_steps = 2
    c.optim.max_steps = 20
    c.optim.learning_rate = 2e-3
    c.optim.eval_steps = c.optim.save_steps = 20
    c.optim.logging_steps = 5

    model, tokenizer = load_model("default")
    layer = num_layers(model) // 2
    probe_pairs = {
        lang: items[:64]
        for lang, items in load_pairs(c.data.align_data, LANGS, max_pairs=200).items()
    }
    loss_before, acc_before = _measure(model, tokenizer, probe_pairs, layer)

    out = tmp_path / "run"
    out.mkdir()
    result = train(c, out, progress=False)
    assert result.global_step == 20 and result.align_layers == [layer]
    logged = [r for r in read_log(out / "log.jsonl") if "align_loss" in r]
    assert len(logged) >= 4

    tuned, tokenizer = load_model("default", adapter=str(out))
    loss_after, acc_after = _measure(tuned, tokenizer, probe_pairs, layer)
    print(
        f"layer {layer}: InfoNCE {loss_before:.3f} -> {loss_after:.3f}, "
        f"retrieval {acc_before:.3f} -> {acc_after:.3f}"
    )
    assert loss_after < loss_before - 0.1
    assert acc_after > acc_before + 0.02
