"""Numerical guards: a NaN/inf loss or weight stops training with one line and leaves the last
good checkpoint intact; pooling never divides by zero (all-padding rows, special-token-only rows,
empty sentences)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_same_numbers, tiny_model, tiny_tokenizer
from safetensors.torch import load_file
from test_train import _cli, _config, _run
from tokenizers import processors
from transformers import TrainerCallback

from midalign.modeling.forward import _masked_mean, pooled_states
from midalign.modeling.loading import load_adapter
from midalign.probe.embeddings import extract_embeddings
from midalign.training.alignment import TrainingDiverged
from midalign.training.checkpoints import last_checkpoint
from midalign.training.losses import info_nce
from midalign.training.trainer import AlignmentTrainer

SPECIAL = (0, 1, 2)  # pad, bos, eos of the tiny models
AFTER = "Lower --learning-rate (or check the data) and train again with --overwrite"


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("midalign train: error:")]


def _nan_in_training(monkeypatch: pytest.MonkeyPatch, name: str, from_step: int) -> None:
    """``AlignmentTrainer.<name>`` returns NaN in training once ``from_step`` optimizer steps
    are done (evaluation, in eval mode, keeps the true loss)."""
    original = getattr(AlignmentTrainer, name)

    def loss(self, model, inputs):
        value = original(self, model, inputs)
        if model.training and self.state.global_step >= from_step:
            return value * float("nan")
        return value

    monkeypatch.setattr(AlignmentTrainer, name, loss)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_in_training(monkeypatch, "task_loss", from_step=2)  # NaN in step 3; checkpoint-2 saved
    assert _cli(tmp_path) == 2
    out = tmp_path / "run"
    good = out / "checkpoints" / "checkpoint-2"
    assert _error_lines(capsys.readouterr().err) == [
        "midalign train: error: training diverged: the task loss became nan at step 3; the last "
        f"good checkpoint is {good} (its adapter loads as it is). {AFTER}"
    ]
    assert last_checkpoint(out) == good
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]
    for name in ("adapter_model.safetensors", "adapter_config.json", "train_result.json"):
        assert not (out / name).exists(), name  # no final adapter from a diverged run
    weights = load_file(str(good / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in weights)
    assert all(torch.isfinite(t).all() for t in weights.values())
    model = load_adapter(tiny_model("gemma3", n_layers=4), str(good))
    lora = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # the trained weights, not a fresh init


def test_nan_alignment_loss_before_any_checkpoint_leaves_no_run(tmp_path, monkeypatch, capsys):
    _nan_in_training(monkeypatch, "align_loss", from_step=0)
    assert _cli(tmp_path) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "midalign train: error: training diverged: the align loss became nan at step 1; "
        f"no checkpoint was saved before it. {AFTER}"
    ]
    assert not (tmp_path / "run").exists()  # nothing worth keeping (as for any failed start)


class _InfWeightsAfter(TrainerCallback):
    """Make a LoRA weight infinite after an optimizer step, as an overflowing gradient would
    with a loss that is still finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("inf"))


def test_infinite_weights_are_never_saved(tmp_path):
    config = _config(
        tmp_path,
        align__schedule="task",
        optim__max_steps=3,
        optim__save_steps=1,
        optim__eval_steps=1,
    )
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        _run(config, out, callbacks=[_InfWeightsAfter(step=2)])
    good = out / "checkpoints" / "checkpoint-1"
    assert str(e.value) == (
        "training diverged: the LoRA weights became NaN or infinite at step 2; the last good "
        f"checkpoint is {good} (its adapter loads as it is). {AFTER}"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-1"]
    weights = load_file(str(good / "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


# --------------------------------------------------------------------------- pooling


def test_masked_mean_reads_only_weighted_positions_and_never_divides_by_zero():
    h = torch.randn(3, 4, 5)
    h[0, 3] = float("inf")  # a padding position
    h[1] = float("nan")  # a fully masked row, as some attention kernels leave it
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    pooled = _masked_mean(h, w)
    torch.testing.assert_close(pooled[0], h[0, :3].mean(0))
    assert torch.equal(pooled[1], torch.zeros(5))
    torch.testing.assert_close(pooled[2], h[2, 1])


def test_padding_and_special_only_rows_pool_to_finite_states(family):
    model = tiny_model(family, n_layers=2)
    ids = torch.tensor([[1, 5, 6, 2], [1, 0, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    layers = [0, 1, 2]
    mean = pooled_states(model, ids, mask, layers, "mean", SPECIAL)  # [3, 4, d]
    mean_all = pooled_states(model, ids, mask, layers, "mean-all", SPECIAL)
    assert torch.isfinite(mean).all() and torch.isfinite(mean_all).all()
    # BOS only, BOS + EOS: no content token, so "mean" falls back to the special tokens
    torch.testing.assert_close(mean[:, 1:3], mean_all[:, 1:3])
    bos = model.model.embed_tokens(torch.tensor([[1]]))[0, 0]
    torch.testing.assert_close(mean[0, 1], bos.float())
    # all padding: a zero vector, and the row changes nothing for the others
    assert torch.equal(mean[:, 3], torch.zeros_like(mean[:, 3]))
    alone = pooled_states(model, ids[:3], mask[:3], layers, "mean", SPECIAL)
    for got, want in zip(mean[:, :3], alone, strict=True):  # batched vs alone: float32 routes
        assert_same_numbers(got, want, torch.float32)


def test_alignment_loss_and_gradient_stay_finite_with_an_all_padding_row():
    model = tiny_model("llama", n_layers=2).train()
    ids = torch.tensor([[1, 5, 6], [1, 7, 0], [1, 8, 9], [0, 0, 0]])
    mask = (ids != 0).long()
    pooled = pooled_states(model, ids, mask, [2], "mean", SPECIAL)
    loss = info_nce(pooled[:, :2], pooled[:, 2:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _tokenizer(bos: bool):
    tok = tiny_tokenizer()
    if not bos:  # like Qwen2: an empty string has no token at all
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="$A", pair="$A $B", special_tokens=[]
        )
    return tok


@pytest.mark.parametrize("bos", [True, False])
def test_empty_sentences_embed_to_finite_vectors(bos):
    model, tok = tiny_model("qwen2", n_layers=2), _tokenizer(bos)
    assert len(tok("")["input_ids"]) == (1 if bos else 0)
    sentences = ["the human rights", "", "   "]
    # a budget of 2 tokens puts the two empty sentences in a batch of their own
    emb = extract_embeddings(model, tok, sentences, [0, 1, 2], batch_tokens=2, progress=False)
    assert emb.shape[:2] == (3, 3) and torch.isfinite(emb).all()
    alone = extract_embeddings(model, tok, sentences[:1], [0, 1, 2], progress=False)
    for got, want in zip(emb[:, :1], alone, strict=True):
        assert_same_numbers(got, want, torch.float32)
    if bos:  # BOS only: the fallback to special tokens, the same vector for both
        torch.testing.assert_close(emb[:, 1], emb[:, 2])
        assert emb[:, 1].abs().sum() > 0
    else:  # no token at all: nothing to average, a zero vector
        assert torch.equal(emb[:, 1:], torch.zeros_like(emb[:, 1:]))
