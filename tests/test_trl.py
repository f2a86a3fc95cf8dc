"""midalign's alignment in TRL's SFTTrainer (`midalign.trl`): the gradients of `midalign train`.

Skipped without TRL (`pip install 'midalign[trl]'`)."""

from __future__ import annotations

import functools
import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from conftest import assert_same_numbers, tiny_model, tiny_tokenizer  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from test_train import _config, _run  # noqa: E402
from transformers import TrainerCallback, TrainingArguments, set_seed  # noqa: E402
from trl import SFTConfig  # noqa: E402

from midalign.data.pairs import as_pairs, encode_pairs, load_pairs  # noqa: E402
from midalign.errors import InputError  # noqa: E402
from midalign.modeling.forward import pooled_states, response_loss  # noqa: E402
from midalign.modeling.loading import load_model, peft_quietly  # noqa: E402
from midalign.probe.embeddings import special_token_ids  # noqa: E402
from midalign.training.config import AlignConfig  # noqa: E402
from midalign.training.losses import info_nce  # noqa: E402


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    """TRL's trainers ping the Hub at construction unless told not to; the tests stay offline."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


from midalign.training.trainer import AlignmentTrainer  # noqa: E402
from midalign.trl import AlignmentSFTTrainer  # noqa: E402

TRAIN_PAGE = Path(__file__).resolve().parents[1] / "docs" / "train.md"


class Gradients(TrainerCallback):
    """Every trainable parameter's accumulated gradient before each optimizer step (None where
    no micro-batch reached it)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor | None]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append(
            {
                name: None if p.grad is None else p.grad.clone()
                for name, p in model.named_parameters()
                if p.requires_grad
            }
        )


class ResponseLossSFT(AlignmentSFTTrainer):
    """The TRL trainer with midalign's task loss: what is left to compare is the schedule, the
    alignment batches and loss, and their scaling, exactly (float64)."""

    def task_loss(self, model, inputs):
        return response_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])


def _rows(batches: list[dict[str, torch.Tensor]]) -> Dataset:
    """Task batches (right-padded) back to their examples, in order: a pre-tokenised dataset
    that SFTTrainer takes as it is (its `labels` column included)."""
    rows = []
    for batch in batches:
        for ids, mask, labels in zip(
            batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True
        ):
            n = int(mask.sum())
            rows.append({"input_ids": ids[:n].tolist(), "labels": labels[:n].tolist()})
    return Dataset.from_list(rows)


# gradient_accumulation_steps counts task micro-batches in both: under `alternate` G = 2 is
# 2 task + 2 alignment micro-batches a step. `joint` has one backward of both per micro-batch;
# it runs with base statistics, measured by the TRL trainer with the adapter disabled.
SCHEDULES = {"alternate": ("none", "batch"), "joint": ("standardize", "base")}


# TRL's fused LM head computes the log-softmax in float32 whatever the model's dtype
# (trl/kernels/chunked_logprob.py), so its task loss on a float64 model is float32-exact, as
# conftest.precision says of Gemma 3's norms; with midalign's task loss the routes are float64.
@pytest.mark.parametrize("task", ["midalign", "sft"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_gradients_equal_midalign_train(tmp_path, monkeypatch, schedule, task):
    """Two optimizer steps of `midalign train` and of the TRL trainer on the same task batches
    and alignment stream, from the same LoRA initialisation (SGD: an Adam step is about
    lr·sign(g), which would blow a rounding difference in a near-zero entry up to 2·lr)."""
    normalize, stats = SCHEDULES[schedule]
    config = _config(
        tmp_path,
        "llama",
        align__schedule=schedule,
        align__normalize=normalize,
        align__stats=stats,
        optim__gradient_accumulation_steps=2,
        optim__max_steps=2,
        optim__max_grad_norm=0.0,
        optim__lr_scheduler="constant",
        lora__dropout=0.0,
        model__dtype="float64",
    )
    config.data.dev_data = None
    config.data.align_dev_pairs = 0
    task_batches = []
    original = AlignmentTrainer.task_loss

    def record(self, model, inputs):
        task_batches.append({k: v.clone() for k, v in inputs.items()})
        return original(self, model, inputs)

    monkeypatch.setattr(AlignmentTrainer, "task_loss", record)
    monkeypatch.setattr(
        "midalign.training.run.TrainingArguments", functools.partial(TrainingArguments, optim="sgd")
    )
    expected = Gradients()
    _run(config, tmp_path / "midalign", callbacks=[expected])

    model, tokenizer = load_model(config.model.name, dtype="float64")
    tokenizer.padding_side = "right"
    set_seed(config.optim.seed)  # as `midalign train` attaches LoRA
    with peft_quietly():
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora.r,
                lora_alpha=config.lora.alpha,
                lora_dropout=0.0,
                target_modules=config.lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    pairs = load_pairs(config.data.align_data, config.data.align_langs, config.data.align_split)
    actual = Gradients()
    trainer = (ResponseLossSFT if task == "midalign" else AlignmentSFTTrainer)(
        model=model,
        processing_class=tokenizer,
        train_dataset=_rows(task_batches),
        args=SFTConfig(
            output_dir=str(tmp_path / "trl"),
            per_device_train_batch_size=config.optim.batch_size,
            gradient_accumulation_steps=2,  # the same G: task micro-batches
            max_steps=2,
            optim="sgd",
            learning_rate=config.optim.learning_rate,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            train_sampling_strategy="sequential",
            seed=config.optim.seed,
            bf16=False,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
        ),
        callbacks=[actual],
        align=config.align,
        align_pairs=[{"x": x, "y": y, "lang": lang} for lang, xy in pairs.items() for x, y in xy],
        align_max_length=config.data.align_max_length,
    )
    trainer.train()

    precision = torch.float64 if task == "midalign" else torch.float32
    assert len(actual.steps) == len(expected.steps) == 2
    for mine, theirs in zip(actual.steps, expected.steps, strict=True):
        assert mine.keys() == theirs.keys()
        for name, grad in theirs.items():
            if grad is None:  # past the alignment layer in an alignment-only micro-batch
                assert mine[name] is None
                continue
            assert mine[name].dtype == torch.float64
            assert_same_numbers(mine[name], grad, precision)
    assert trainer.align_position == 4  # one alignment micro-batch per task micro-batch


def _docs_example() -> str:
    """The Python block of docs/train.md's "With TRL's SFTTrainer" section."""
    section = TRAIN_PAGE.read_text().split("### With TRL's SFTTrainer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_example_trains_and_logs_both_losses(tmp_path, monkeypatch):
    """The example of docs/train.md, on a tiny random Llama offline: two optimizer steps, each
    logging the task and the alignment loss, and a checkpoint that holds the stream position."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = {"model": tiny_model("llama", n_layers=4), "tokenizer": tiny_tokenizer()}
    exec(_docs_example(), namespace)
    trainer = namespace["trainer"]
    assert trainer.args.bf16 is False  # sft_config: auto, and this CPU has no native bf16
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert [row["step"] for row in logged] == [1, 2]
    for row in logged:
        assert math.isfinite(row["task_loss"]) and math.isfinite(row["align_loss"])
        assert "mean_token_accuracy" in row  # SFTTrainer's own metrics still come
    assert trainer.align.layers == [2]  # middle of 4
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert all(p.abs().sum() > 0 for p in lora_b)  # every layer moved (task reaches them all)

    # resumed from step 1, the stream goes on from its saved position to the same adapter
    checkpoint = tmp_path / "runs" / "sft-align" / "checkpoint-1"
    stream = json.loads((checkpoint / "align_stream.json").read_text())
    assert stream == {"align_position": 1, "task_examples": 2, "align_pairs": 2}
    again = {"model": tiny_model("llama", n_layers=4), "tokenizer": tiny_tokenizer()}
    exec(_docs_example().replace("trainer.train()", "pass"), again)
    again["trainer"].train(resume_from_checkpoint=str(checkpoint))
    assert again["trainer"].align_position == 2
    resumed = dict(again["trainer"].model.named_parameters())
    for name, p in trainer.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(resumed[name], p), name


def test_pairs_and_settings_are_checked():
    assert as_pairs([{"x": "a", "y": "b"}, {"x": "c", "y": "d", "lang": "deu"}]) == {
        "all": [("a", "b")],
        "deu": [("c", "d")],
    }
    with pytest.raises(ValueError, match="alignment pair 0 needs the columns x and y"):
        as_pairs([{"source": "a", "target": "b"}])
    data = Dataset.from_list([{"prompt": "the", "completion": " a"}] * 2)
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    pairs = [{"x": "der", "y": "the"}, {"x": "die", "y": "a"}]
    for align, message in (
        (AlignConfig(temperature=0.0), "align.temperature must be positive"),
        (AlignConfig(schedule="alternate-steps"), "alternate-steps is not available"),
    ):
        with pytest.raises(ValueError, match=message):
            AlignmentSFTTrainer(
                model=model,
                processing_class=tokenizer,
                train_dataset=data,
                args=SFTConfig(output_dir="unused", report_to="none", use_cpu=True),
                align=align,
                align_pairs=pairs,
            )


def test_evaluation_adds_the_dev_alignment_metrics(tmp_path):
    """`align_eval_pairs` add the held-out alignment loss (recomputed here from the pooled
    states) and top-1 accuracy to SFTTrainer's own evaluation."""
    tokenizer = tiny_tokenizer()
    data = Dataset.from_list([{"prompt": "der die", "completion": " the a"}] * 4)
    dev = [
        {"x": "der mensch", "y": "the person"},
        {"x": "die rechte", "y": "the rights"},
        {"x": "das gesetz ist", "y": "the law is"},
    ]
    trainer = AlignmentSFTTrainer(
        model=tiny_model("llama", n_layers=4),
        processing_class=tokenizer,
        train_dataset=data,
        eval_dataset=data,
        args=SFTConfig(output_dir=str(tmp_path), bf16=False, report_to="none", use_cpu=True),
        peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"),
        align=AlignConfig(layers="3", temperature=0.5, batch_pairs=4),
        align_pairs=dev,
        align_eval_pairs=dev,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_task_loss"] == metrics["eval_loss"]
    batch = encode_pairs(tokenizer, [(p["x"], p["y"]) for p in dev], 128)
    with torch.no_grad():
        pooled = pooled_states(
            trainer.model,
            batch["input_ids"],
            batch["attention_mask"],
            [3],
            "mean",
            special_token_ids(tokenizer),
            final_norm=False,
        )
    loss = info_nce(pooled[:, :3], pooled[:, 3:], temperature=0.5)
    assert metrics["eval_align_loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert 0 <= metrics["eval_align_acc"] <= 1


def test_sft_config_resolves_bf16_as_midalign_train_does(monkeypatch):
    """TRL's default bf16=True fails on a machine without a GPU; ``sft_config`` takes
    ``optim.bf16``'s values and resolves ``auto`` from the hardware (here: patched)."""
    import midalign.modeling.dtypes
    from midalign.trl import sft_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for feature, on in (("AMX", True), ("AVX512-BF16", True), (None, False)):
        monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda f=feature: f)
        config = sft_config(output_dir="unused", report_to="none")
        assert isinstance(config, SFTConfig) and config.bf16 is on
        assert config.use_cpu is on  # transformers wants use_cpu before it autocasts on a CPU
        assert sft_config(output_dir="unused", report_to="none", bf16=False).bf16 is False
    config = sft_config(output_dir="unused", report_to="none", bf16="true", use_cpu=True)
    assert config.bf16 is True
    with pytest.raises(InputError, match="optim.bf16 must be one of auto, true, false"):
        sft_config(output_dir="unused", bf16="fast")
