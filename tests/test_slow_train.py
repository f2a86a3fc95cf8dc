"""20 alignment steps on the default model lower the middle-layer InfoNCE of aligned pairs.

The issue asked for 20 steps of `alternate`; on Gemma 3 270M that does not move the alignment
loss (InfoNCE on 64 pairs 4.142 -> 4.141 at lr 2e-3 with the inverse-sqrt schedule, 4.136 with a
constant rate; retrieval 0.417 -> 0.422 / 0.344), presumably because the large first task
gradients (task loss 12 at step 1) fill Adam's second moments and scale the alignment part of
every update down for far longer than 20 steps. `align` isolates the wiring this test is
about: the early-exit InfoNCE step, the stream and the Trainer lower the loss the probe's
embeddings give (4.142 -> 3.481 on 64 pairs per language). Cosine retrieval of the same pairs
fell meanwhile (0.417 -> 0.297), so the issue's "raises retrieval" is NOT asserted: it does not
hold at this scale and is an open question, not a passing test.
"""

from __future__ import annotations

import pytest
from conftest import shared_data

from midalign.data.pairs import load_pairs
from midalign.modeling.layers import num_layers
from midalign.modeling.loading import load_model
from midalign.probe.embeddings import extract_embeddings
from midalign.probe.retrieval import retrieval_accuracy
from midalign.training.callbacks import read_log
from midalign.training.config import TrainConfig
from midalign.training.losses import info_nce
from midalign.training.run import train

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
def test_align_steps_lower_the_mid_layer_alignment_loss(tmp_path):
    tatoeba = shared_data("tatoeba")
    c = TrainConfig()
    c.align.schedule = "align"
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
    # Measured on AMD EPYC, float32: 4.142 -> 3.481 (a drop of 0.66) on two days, to the digit.
    # Another CPU's summation order moves 20 Adam steps by rounding-sized amounts, not tenths
    # of a nat; 0.3 is half the measured drop, and a run that does not learn stays at 4.14.
    assert loss_after < loss_before - 0.3
