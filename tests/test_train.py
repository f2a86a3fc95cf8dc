"""`midalign train` on tiny random models: schedules, loss scaling, early exit, resume, errors."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch
from conftest import ROUTE_DTYPES, assert_same_numbers, precision, tiny_model, tiny_tokenizer
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import TrainerCallback

from midalign.cli import main
from midalign.errors import InputError
from midalign.files import MARKER
from midalign.modeling.forward import _masked_mean, pooled_states, pooling_mask
from midalign.modeling.layers import decoder_stack
from midalign.training.callbacks import read_log
from midalign.training.checkpoints import last_checkpoint
from midalign.training.config import TrainConfig
from midalign.training.losses import info_nce
from midalign.training.run import train
from midalign.training.trainer import AlignmentTrainer

WORDS = (
    "the a is of and to in human rights all everyone free equal dignity born person people "
    "right law"
).split()
X_WORDS = {"deu": "der die das und ist ein eine".split(), "fra": "le la les et est un une".split()}


def _model_dir(tmp_path, family="gemma3", n_layers=4):
    path = tmp_path / f"tiny-{family}"
    if not path.exists():
        tiny_model(family, n_layers=n_layers).save_pretrained(path)
        tiny_tokenizer().save_pretrained(path)
    return path


def _task_file(path, n, seed):
    rng = random.Random(seed)
    rows = [
        {"prompt": " ".join(rng.choices(WORDS, k=rng.randint(2, 8))), "response": rng.choice(WORDS)}
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _tatoeba_dir(root, n=30):
    root.mkdir(exist_ok=True)
    rng = random.Random(0)
    for lang, words in X_WORDS.items():
        xs, ys = [], []
        for _ in range(n):
            k = rng.randint(2, 6)
            xs.append(" ".join(rng.choices(words, k=k)))
            ys.append(" ".join(rng.choices(WORDS, k=k)))
        (root / f"tatoeba.{lang}-eng.{lang}").write_text("\n".join(xs) + "\n")
        (root / f"tatoeba.{lang}-eng.eng").write_text("\n".join(ys) + "\n")
    return root


def _config(tmp_path, family="gemma3", **changes) -> TrainConfig:
    c = TrainConfig()
    c.model.name = str(_model_dir(tmp_path, family))
    c.data.task_data = str(_task_file(tmp_path / "train.jsonl", 10, seed=1))
    c.data.dev_data = str(_task_file(tmp_path / "dev.jsonl", 4, seed=2))
    c.data.align_data = f"tatoeba:{_tatoeba_dir(tmp_path / 'tatoeba')}"
    c.data.align_langs = ["deu", "fra"]
    c.data.align_dev_pairs = 4
    c.align.layers = "2"
    c.align.batch_pairs = 4
    c.optim.batch_size = 2
    c.optim.gradient_accumulation_steps = 2
    c.optim.max_steps = 4
    c.optim.eval_steps = c.optim.save_steps = 2
    c.optim.logging_steps = 1
    c.optim.learning_rate = 1e-2
    c.optim.warmup_ratio = 0.0
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(c, section), name, value)
    return c


def _run(config, out, **kwargs):
    out.mkdir(parents=True, exist_ok=True)
    return train(config, out, progress=False, **kwargs)


def _adapter(out):
    return load_file(str(out / "adapter_model.safetensors"))


def test_alternate_order_counts_and_stream_position(tmp_path, monkeypatch):
    kinds: list[tuple[int, str]] = []
    task_loss, align_loss = AlignmentTrainer.task_loss, AlignmentTrainer.align_loss

    def record_task(self, model, inputs):
        kinds.append((self.state.global_step, "task"))
        return task_loss(self, model, inputs)

    def record_align(self, model, inputs):
        kinds.append((self.state.global_step, "align"))
        return align_loss(self, model, inputs)

    monkeypatch.setattr(AlignmentTrainer, "task_loss", record_task)
    monkeypatch.setattr(AlignmentTrainer, "align_loss", record_align)
    config = _config(
        tmp_path,
        optim__gradient_accumulation_steps=2,
        optim__max_steps=2,
        optim__eval_steps=10,
        optim__save_steps=10,
    )
    config.data.dev_data = None
    config.data.align_dev_pairs = 0
    result = _run(config, tmp_path / "run")
    train_kinds = [kind for _, kind in kinds]
    # G = 2 task micro-batches per optimizer step, each after its alignment micro-batch
    # (alignment first: module docstring)
    assert train_kinds == ["align", "task"] * 4
    assert [step for step, _ in kinds] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert result.global_step == 2
    rows = [r for r in read_log(tmp_path / "run" / "log.jsonl") if "task_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]


def test_alternate_steps_order_epochs_and_stream_position(tmp_path, monkeypatch):
    """Whole optimizer steps per objective, alignment first: 10 task examples in batches of 2
    are 5 task micro-batches per epoch, so with G = 2 an epoch is A A | T T | A A | T T | A A |
    T (6 steps, the last with one batch), every task example used once, and the next epoch
    starts with an alignment step again."""
    kinds: list[tuple[int, str, int]] = []
    task_loss, align_loss = AlignmentTrainer.task_loss, AlignmentTrainer.align_loss

    def record_task(self, model, inputs):
        kinds.append((self.state.global_step, "task", inputs["input_ids"].shape[0]))
        return task_loss(self, model, inputs)

    def record_align(self, model, inputs):
        kinds.append((self.state.global_step, "align", self.align_position))
        return align_loss(self, model, inputs)

    monkeypatch.setattr(AlignmentTrainer, "task_loss", record_task)
    monkeypatch.setattr(AlignmentTrainer, "align_loss", record_align)
    config = _config(
        tmp_path,
        align__schedule="alternate-steps",
        optim__max_steps=8,
        optim__eval_steps=10,
        optim__save_steps=10,
    )
    config.data.dev_data = None
    config.data.align_dev_pairs = 0
    result = _run(config, tmp_path / "run")
    assert result.global_step == 8 and result.train_examples == 10
    by_step = [[kind for step, kind, _ in kinds if step == s] for s in range(8)]
    assert by_step == [
        ["align", "align"],
        ["task", "task"],
        ["align", "align"],
        ["task", "task"],
        ["align", "align"],
        ["task"],  # the epoch's last task batch
        ["align", "align"],  # epoch 2
        ["task", "task"],
    ]
    # the first epoch's task rows: each of the 10 examples once
    assert sum(n for step, kind, n in kinds if kind == "task" and step < 6) == 10
    # the alignment stream advances by one per alignment micro-batch (position after drawing)
    assert [n for _, kind, n in kinds if kind == "align"] == list(range(1, 9))
    rows = read_log(tmp_path / "run" / "log.jsonl")
    logged = [(r["step"], "task_loss" in r, "align_loss" in r) for r in rows if "loss" in r]
    assert logged == [(s, s % 2 == 0, s % 2 == 1) for s in range(1, 9)]
    assert [r["epoch"] for r in rows if "loss" in r][5] == pytest.approx(1.0)


# float64 on Llama checks the arithmetic to 1e-10; Gemma 3 (whose norms round to float32
# anyway: conftest.precision) keeps the production dtype covered
@pytest.mark.parametrize(
    "family, dtype, schedule, kinds",
    [
        ("llama", "float64", "alternate", [["align", "task"] * 2]),
        ("gemma3", "float32", "alternate", [["align", "task"] * 2]),
        ("llama", "float64", "alternate-steps", [["align"] * 4, ["task"] * 4]),
        ("llama", "float64", "alternate-matched", [["align", "task"] * 4]),
    ],
)
def test_accumulated_gradient_is_the_mean_over_micro_batches(
    tmp_path, monkeypatch, family, dtype, schedule, kinds
):
    """Recompute each step's gradient by hand as the mean of its 4 micro-batch losses over the
    same batches: (a1 + t1 + a2 + t2) / 4 under alternate with G = 2 (each loss divided by the
    2G micro-batches of both kinds); (a1 + … + a4) / 4, then
    (t1 + … + t4) / 4 under alternate-steps, standardised with the batch statistics; under
    matched alternate the 4 task micro-batches' mean plus the 4 alignment micro-batches' mean,
    (a1 + t1 + … + a4 + t4) / 4."""
    seen: list[tuple[int, str, dict]] = []
    task_loss, align_loss = AlignmentTrainer.task_loss, AlignmentTrainer.align_loss

    def record_task(self, model, inputs):
        seen.append((self.state.global_step, "task", {k: v.clone() for k, v in inputs.items()}))
        return task_loss(self, model, inputs)

    def record_align(self, model, inputs):
        seen.append((self.state.global_step, "align", {k: v.clone() for k, v in inputs.items()}))
        return align_loss(self, model, inputs)

    monkeypatch.setattr(AlignmentTrainer, "task_loss", record_task)
    monkeypatch.setattr(AlignmentTrainer, "align_loss", record_align)
    checked = []

    class Check(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            params = [p for p in model.parameters() if p.requires_grad]
            accumulated = [None if p.grad is None else p.grad.clone() for p in params]
            trainer = Check.trainer
            model.zero_grad(set_to_none=True)
            step = [(kind, inputs) for s, kind, inputs in seen if s == state.global_step]
            assert [kind for kind, _ in step] == kinds[state.global_step]
            losses = [
                (task_loss if kind == "task" else align_loss)(trainer, model, inputs)
                for kind, inputs in step
            ]
            (sum(losses) / 4).backward()
            for p, g in zip(params, accumulated, strict=True):
                assert p.dtype == getattr(torch, dtype)
                if g is None:  # above the alignment layer: an alignment step reaches nothing
                    assert p.grad is None and "align" in kinds[state.global_step]
                    continue
                assert_same_numbers(p.grad, g, getattr(torch, dtype))
                p.grad.copy_(g)
            checked.append(state.global_step)

    init = AlignmentTrainer.__init__

    def keep(self, *args, **kwargs):
        init(self, *args, **kwargs)
        Check.trainer = self

    monkeypatch.setattr(AlignmentTrainer, "__init__", keep)
    config = _config(
        tmp_path,
        family,
        align__schedule=schedule.removesuffix("-matched"),
        align__matched=schedule.endswith("-matched"),
        optim__gradient_accumulation_steps=2 if schedule == "alternate" else 4,
        optim__max_steps=len(kinds),
        optim__max_grad_norm=0.0,
        lora__dropout=0.0,
        model__dtype=dtype,
    )
    if schedule == "alternate-steps":
        config.align.normalize = "standardize"
    config.data.dev_data = None
    config.data.align_dev_pairs = 0
    _run(config, tmp_path / "run", callbacks=[Check()])
    assert checked == list(range(len(kinds)))


def test_matched_alternate_trains_on_sft_task_batches_with_alignment_on_top(tmp_path, monkeypatch):
    """Matched ``alternate`` with ``data_order: seeded`` hands the task loss the very
    micro-batches SFT gets, step by step (over an epoch boundary: 4 steps of 2 × 2 examples of
    10; the global order differs from the second epoch on), adds one alignment micro-batch to
    each, and reports the budget; so does the unmatched form (it halves each loss)."""
    seen: list[tuple[int, list]] = []
    task_loss = AlignmentTrainer.task_loss

    def record_task(self, model, inputs):
        if model.training:  # not the dev loss
            seen.append((self.state.global_step, inputs["input_ids"].tolist()))
        return task_loss(self, model, inputs)

    monkeypatch.setattr(AlignmentTrainer, "task_loss", record_task)
    runs = {}
    for name, schedule, matched in [
        ("sft", "task", False),
        ("matched", "alternate", True),
        ("shared", "alternate", False),
    ]:
        seen.clear()
        config = _config(tmp_path, align__schedule=schedule, align__matched=matched)
        config.optim.eval_steps = config.optim.save_steps = 4
        config.optim.data_order = "seeded"
        result = _run(config, tmp_path / name)
        runs[name] = (list(seen), result.budget)
    (sft, sft_budget), (matched, matched_budget), (shared, shared_budget) = runs.values()
    # 5 task micro-batches an epoch: steps of 2, 2, 1 (the epoch's last), 2, in SFT's order
    assert [step for step, _ in sft] == [0, 0, 1, 1, 2, 3, 3]
    assert matched == sft == shared
    # epoch 2 is drawn anew (the Trainer sets the sampler's epoch)
    assert [rows for _, rows in sft[5:]] != [rows for _, rows in sft[:2]]
    assert sft_budget["optimizer_steps"] == matched_budget["optimizer_steps"] == 4
    assert sft_budget["task_examples"] == matched_budget["task_examples"] == 7 * 2
    assert (sft_budget["align_pairs"], matched_budget["align_pairs"]) == (0, 7 * 4)
    assert shared_budget == matched_budget
    # one evaluation, at the last step: the adapter is the last step's
    assert matched_budget["adapter"] == {
        "optimizer_steps": 4,
        "task_examples": 14,
        "align_pairs": 28,
    }


@ROUTE_DTYPES
def test_early_exit_gradient_equals_full_forward_gradient(family, dtype):
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_model(family, n_layers=3, dtype=dtype),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )
    ids = torch.tensor([[1, 5, 9, 12, 2], [1, 7, 3, 0, 0], [1, 20, 21, 22, 0], [1, 30, 2, 0, 0]])
    mask = (ids != 0).long()
    params = [p for p in model.parameters() if p.requires_grad]
    layer, special = 2, [0, 1, 2]

    pooled = pooled_states(model, ids, mask, [layer], "mean", special)
    early = info_nce(pooled[:, :2], pooled[:, 2:], 0.1)
    early_grads = torch.autograd.grad(early, params, allow_unused=True)

    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True
    )
    h = _masked_mean(out.hidden_states[layer], pooling_mask(ids, mask, "mean", special))
    full = info_nce(h[None, :2], h[None, 2:], 0.1)
    full_grads = torch.autograd.grad(full, params, allow_unused=True)

    assert early.dtype == dtype
    assert_same_numbers(early, full, precision(family, dtype))
    nonzero = 0
    for ge, gf in zip(early_grads, full_grads, strict=True):
        if ge is None or gf is None:  # layers past the alignment layer: no gradient either way
            assert ge is None and gf is None
            continue
        assert ge.dtype == dtype  # PEFT's LoRA weights follow the base model's dtype
        assert_same_numbers(ge, gf, precision(family, dtype))
        nonzero += bool(ge.abs().sum() > 0)
    assert nonzero > 0


def test_schedules_update_differently(tmp_path):
    outs = {}
    for schedule in ("alternate", "joint", "task", "align"):
        config = _config(tmp_path, align__schedule=schedule, optim__max_steps=2, lora__dropout=0.0)
        if schedule == "align":
            config.data.task_data = config.data.dev_data = None
        _run(config, tmp_path / schedule)
        outs[schedule] = _adapter(tmp_path / schedule)
    names = sorted(outs["alternate"])
    for a, b in (("alternate", "joint"), ("alternate", "task"), ("joint", "task")):
        assert any(not torch.equal(outs[a][n], outs[b][n]) for n in names), (a, b)
    # Alignment only at layer 2 of 4: layers 3 and 4 (indices 2, 3) never see a gradient,
    # so their LoRA B stays exactly zero; layers 1 and 2 moved.
    align = outs["align"]
    for name, tensor in align.items():
        if "lora_B" in name:
            index = int(name.split("layers.")[1].split(".")[0])
            assert torch.count_nonzero(tensor).item() == 0 if index >= 2 else tensor.abs().sum() > 0


class _InterruptAt(TrainerCallback):
    """Sends this process SIGINT at the end of optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            signal.raise_signal(signal.SIGINT)


def _curve(out):
    keys = ("loss", "task_loss", "align_loss", "eval_task_loss", "eval_align_loss")
    keys += ("eval_align_acc", "lr")
    return [
        {k: r[k] for k in ("step", *keys) if k in r}
        for r in read_log(out / "log.jsonl")
        if any(k in r for k in keys)
    ]


@pytest.mark.parametrize(
    "schedule, normalize, stats, position",
    [
        # 2 task micro-batches a step, each with one alignment micro-batch: 2 + 2 + 1 (the
        # epoch's last) by step 3
        ("alternate", "none", "batch", 5),
        ("alternate-steps", "standardize", "base", 4),
        # the same, with the order of epoch 2 from the sampler's own generator
        ("alternate-matched-seeded", "none", "batch", 5),
    ],
)
def test_resume_reproduces_the_uninterrupted_run_exactly(
    tmp_path, monkeypatch, schedule, normalize, stats, position
):
    # 5 task batches per epoch, 8 steps: the run crosses an epoch boundary after the resume
    # (alternate: 5 steps an epoch; alternate-steps: 6, and step 3 ends mid-alternation).
    config = _config(
        tmp_path,
        optim__max_steps=8,
        align__schedule=schedule.removesuffix("-matched-seeded"),
        align__normalize=normalize,
        align__stats=stats,
    )
    if schedule.endswith("-matched-seeded"):  # the task order from its own generator
        config.align.matched, config.optim.data_order = True, "seeded"
    straight = tmp_path / "straight"
    straight_budget = _run(config, straight).budget

    stopped = tmp_path / "stopped"
    result = _run(config, stopped, callbacks=[_InterruptAt(3)])
    assert result.interrupted and result.global_step == 3
    assert not (stopped / "adapter_model.safetensors").exists()
    checkpoint = last_checkpoint(stopped)
    assert checkpoint.name == "checkpoint-3"
    stream = json.loads((checkpoint / "align_stream.json").read_text())
    assert stream["align_position"] == position
    if stats == "base":  # resumed with the checkpoint's statistics, not computed again
        assert (checkpoint / "align_stats.safetensors").is_file()

        def fail(*args, **kwargs):
            raise AssertionError("statistics computed again on resume")

        monkeypatch.setattr("midalign.training.align_setup.base_stats", fail)
    result = train(config, stopped, checkpoint, progress=False)
    assert not result.interrupted and result.global_step == 8
    assert result.budget == straight_budget  # what was seen, counted on across the resume

    assert _curve(stopped) == _curve(straight)
    task_steps = 4 if schedule == "alternate-steps" else 8
    assert len([r for r in _curve(straight) if "task_loss" in r]) == task_steps
    assert len([r for r in _curve(straight) if "eval_align_acc" in r]) == 4
    a, b = _adapter(straight), _adapter(stopped)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "limit", [{"optim__max_steps": 4}, {"optim__max_steps": -1, "optim__epochs": 2}]
)
def test_resume_at_the_last_step_trains_nothing_more(tmp_path, monkeypatch, limit):
    """Killed after its last checkpoint but before its adapter, a run resumed there writes the
    adapter it would have written: no step beyond the limit (the Trainer alone trains one)."""
    config = _config(tmp_path, **limit)
    out = tmp_path / "run"
    result = _run(config, out)
    steps = result.global_step
    assert last_checkpoint(out).name == f"checkpoint-{steps}"
    finished = _adapter(out)
    (out / "adapter_model.safetensors").unlink()
    calls = []
    step = AlignmentTrainer.training_step
    monkeypatch.setattr(
        AlignmentTrainer,
        "training_step",
        lambda self, *a, **k: calls.append(self.state.global_step) or step(self, *a, **k),
    )
    result = train(config, out, last_checkpoint(out), progress=False)
    assert calls == [] and result.global_step == steps
    resumed = _adapter(out)
    assert resumed.keys() == finished.keys()
    assert all(torch.equal(resumed[n], finished[n]) for n in finished)
    assert max(r["step"] for r in read_log(out / "log.jsonl")) == steps


def test_incomplete_checkpoint_is_skipped(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4):
        (run / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "midalign_complete").write_text("2\n")
    assert last_checkpoint(run).name == "checkpoint-2"


def _cli(tmp_path, *extra, out="run"):
    c = _config(tmp_path)
    return main(
        [
            "train",
            "--model",
            c.model.name,
            "--task-data",
            c.data.task_data,
            "--dev-data",
            c.data.dev_data,
            "--align-data",
            c.data.align_data,
            "--align-langs",
            "deu,fra",
            "--align-layers",
            "2",
            "--align-batch-pairs",
            "4",
            "--align-dev-pairs",
            "4",
            "--batch-size",
            "2",
            "--gradient-accumulation-steps",
            "1",
            "--max-steps",
            "4",
            "--eval-steps",
            "2",
            "--save-steps",
            "2",
            "--logging-steps",
            "1",
            "--out",
            str(tmp_path / out),
            "--no-progress",
            *extra,
        ]
    )


def test_cli_outputs_a_loadable_adapter_and_refuses_reuse(tmp_path, capsys):
    assert _cli(tmp_path) == 0
    out = tmp_path / "run"
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "config.yaml",
        "log.jsonl",
        "training_curves.png",
        "train_result.json",
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert "InfoNCE at layer(s) 2 (`2`)" in (out / "README.md").read_text()  # the model card
    umask = os.umask(0)
    os.umask(umask)
    # every file as readable as the umask makes it (safetensors alone writes 0600)
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*") if p.is_file()}
    assert modes == {oct(0o666 & ~umask)}
    result = json.loads((out / "train_result.json").read_text())
    assert result["align_layers"] == [2] and result["global_step"] == 4
    # what --out holds is the adapter of the best checkpoint
    best_dir = out / "checkpoints" / result["best_checkpoint"].split("/")[-1]
    saved = load_file(str(best_dir / "adapter_model.safetensors"))
    final = _adapter(out)
    assert all(torch.equal(saved[n], final[n]) for n in final)
    rows = read_log(out / "log.jsonl")
    evals = [r for r in rows if "eval_task_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all("eval_align_loss" in r for r in evals)
    # log.jsonl holds numbers; stdout shows each of its rows as one line, 4 significant digits
    assert all(isinstance(v, int | float) for r in rows for v in r.values())
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        f"step 1/4: loss {rows[0]['loss']:.4g}, grad_norm {rows[0]['grad_norm']:.4g}, "
        f"learning_rate 0, task_loss {rows[0]['task_loss']:.4g}, "
        f"align_loss {rows[0]['align_loss']:.4g}, epoch 0.2"
    )
    hidden = ("step", "epoch", "lr", "total_flos")  # the Trainer logs the epoch last
    assert printed[:-1] == [
        f"step {r['step']}/4: "
        + ", ".join(f"{k} {v:.4g}" for k, v in r.items() if k not in hidden)
        + f", epoch {r['epoch']:.4g}"
        for r in rows
    ]
    assert printed[-1] == f"trained 4 steps, best dev {result['best_metric']:.4f} at " + (
        f"{best_dir.name}; adapter in {out}"
    )
    model = PeftModel.from_pretrained(tiny_model("gemma3", n_layers=4), str(out))
    assert any("lora_A" in n for n, _ in model.named_parameters())

    assert _cli(tmp_path) == 2
    assert "already exists" in capsys.readouterr().err
    assert _cli(tmp_path, "--resume", "--temperature", "0.5") == 2
    err = capsys.readouterr().err
    assert "different config (align.temperature: 0.1 -> 0.5)" in err
    assert (out / MARKER).is_file()  # so --overwrite may replace it
    assert _cli(tmp_path, "--overwrite", "--max-steps", "2") == 0
    assert json.loads((out / "train_result.json").read_text())["global_step"] == 2


def test_cli_names_resume_first_for_an_unfinished_run(tmp_path, capsys):
    """A run stopped by a signal (train_result.json says interrupted) or killed (none) keeps
    its checkpoints; started again without --resume, the error names --resume before
    --overwrite, which would discard them. A finished run is only "already exists"."""
    assert _cli(tmp_path) == 0
    out = tmp_path / "run"
    result = json.loads((out / "train_result.json").read_text())
    unfinished = (
        f"midalign train: error: --out: {out} holds an unfinished run (last complete "
        f"checkpoint: checkpoint-4); continue it with `midalign train --out {out} --resume`, or "
        "pass --overwrite to discard its checkpoints and start over"
    )
    capsys.readouterr()
    (out / "train_result.json").write_text(json.dumps({**result, "interrupted": True}))
    assert _cli(tmp_path) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == unfinished
    (out / "train_result.json").unlink()  # killed: no result at all
    assert _cli(tmp_path) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == unfinished
    assert (out / "checkpoints" / "checkpoint-4").is_dir()  # nothing discarded
    (out / "train_result.json").write_text(json.dumps(result))
    assert _cli(tmp_path) == 2
    assert "already exists (pass --overwrite to replace it)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--temperature", "0"], "--temperature must be positive"),
        (["--align-layers", "9"], "--align-layers: layer 9 is out of range"),
        (["--align-langs", "deu,swh"], "swh"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, extra, message):
    assert _cli(tmp_path, *extra) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_response_field(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    assert _cli(tmp_path, "--task-data", str(bad)) == 2
    assert f"{bad}:2: missing field 'response'" in capsys.readouterr().err


def test_auto_layer_is_the_layer_of_peak_retrieval(tmp_path):
    from midalign.data.pairs import load_pairs
    from midalign.probe.embeddings import extract_embeddings
    from midalign.probe.retrieval import retrieval_accuracy
    from midalign.training.align_setup import resolve_layers

    model, tok = tiny_model("llama", n_layers=4), tiny_tokenizer()
    pairs = load_pairs(f"tatoeba:{_tatoeba_dir(tmp_path / 'tat')}", ["deu", "fra"])
    layers, by_layer = resolve_layers("auto", model, tok, pairs, per_lang=20, pool="mean")
    # independently: per layer, the mean of x→y and y→x retrieval accuracy over both languages
    expected = {}
    for layer in range(1, 5):
        accs = []
        for items in pairs.values():
            x = extract_embeddings(model, tok, [a for a, _ in items[:20]], [layer], progress=False)
            y = extract_embeddings(model, tok, [b for _, b in items[:20]], [layer], progress=False)
            accs += [retrieval_accuracy(x[0], y[0]), retrieval_accuracy(y[0], x[0])]
        expected[str(layer)] = sum(accs) / len(accs)
    assert by_layer == pytest.approx(expected, abs=1e-6)
    assert layers == [int(max(expected, key=expected.get))]
    assert resolve_layers("middle", model, tok, pairs, 20, "mean") == ([2], None)
    with pytest.raises(InputError, match="layer 0 is the embedding output"):
        resolve_layers("0", model, tok, pairs, 20, "mean")


def test_dev_task_loss_equals_the_models_own_loss_on_the_dev_batches(tmp_path):
    """The logged eval_task_loss (computed with logits only at response tokens) equals the
    batch-size-weighted mean of ``model(**batch).loss`` over the dev set, recomputed here
    from the saved adapter (the last step is the only evaluation, so it is the best)."""
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

    from midalign.data.instructions import load_task_dataset

    config = _config(tmp_path, optim__max_steps=2, align__schedule="task")
    out = tmp_path / "run"
    _run(config, out)
    logged = [r["eval_task_loss"] for r in read_log(out / "log.jsonl") if "eval_task_loss" in r]
    assert len(logged) == 1
    tokenizer = tiny_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(config.model.name)
    model = PeftModel.from_pretrained(base, out).eval()
    dev = load_task_dataset(config.data.dev_data, tokenizer, config.data.max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dev), config.optim.batch_size):
            rows = [dev[i] for i in range(start, min(start + config.optim.batch_size, len(dev)))]
            batch = collate(rows)
            total += model(**batch).loss.item() * len(rows)
            count += len(rows)
    assert logged[0] == pytest.approx(total / count, rel=1e-5)


def test_an_epoch_run_of_one_warm_up_step_is_refused(tmp_path):
    """validate refuses --max-steps 1 with a warm-up; a run counted in epochs learns its step
    count only in the Trainer, which refuses it there, before any step."""
    config = _config(tmp_path, optim__max_steps=-1, optim__epochs=1.0, optim__warmup_ratio=0.03)
    config.data.task_data = str(_task_file(tmp_path / "two.jsonl", 2, seed=1))  # one batch
    with pytest.raises(InputError) as e:
        _run(config, tmp_path / "run")
    assert str(e.value) == (
        "--warmup-ratio 0.03 over 1 optimizer step (--epochs 1): the inverse_sqrt schedule's "
        "learning rate is 0 throughout (its warm-up starts at 0), so training would not change "
        "the adapter; set --warmup-ratio 0 or train more steps"
    )
    assert last_checkpoint(tmp_path / "run") is None
    config.optim.warmup_ratio = 0.0
    result = _run(config, tmp_path / "run")
    assert result.global_step == 1
    b = [t for k, t in _adapter(tmp_path / "run").items() if "lora_B" in k]
    assert b and all(t.abs().sum() > 0 for t in b)  # every B moved off its 0 init


def test_resume_from_another_directory_keeps_the_best_checkpoint(tmp_path, monkeypatch):
    """trainer_state.json names the best checkpoint relative to the run folder, so a run
    started with a relative --out resumes from any working directory. Here the dev loss is
    5.026, 4.676, 4.761 at steps 1, 2, 3 (evaluated every step, saved every 2): early stopping
    ends the run at step 3, which saves nothing, and the adapter kept is checkpoint-2's, also
    when the run was stopped at step 2 and resumed from elsewhere (before, the Trainer could
    not find the best checkpoint from there, dropped it, and kept step 3's adapter)."""
    config = _config(
        tmp_path,
        optim__max_steps=8,
        optim__learning_rate=5e-2,
        optim__eval_steps=1,
        optim__early_stopping_patience=1,
        optim__gradient_accumulation_steps=1,
    )
    straight = _run(config, tmp_path / "straight")
    assert (straight.global_step, straight.best_checkpoint) == (3, "checkpoints/checkpoint-2")

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert _run(config, Path("run"), callbacks=[_InterruptAt(2)]).interrupted
    state = json.loads(Path("run/checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == "checkpoints/checkpoint-2"
    monkeypatch.chdir(tmp_path / "b")
    run = Path("../a/run")
    result = train(config, run, last_checkpoint(run), progress=False)
    assert (result.global_step, result.best_checkpoint) == (3, "checkpoints/checkpoint-2")
    assert result.best_metric == straight.best_metric
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "a" / "run")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_resume_reads_the_runs_config_and_reports_a_changed_option(tmp_path, capsys):
    """`--resume` with options lays them on the run's config.yaml (not on the defaults, which
    lack --task-data): an unchanged value resumes, a changed one is named as a difference."""
    assert _cli(tmp_path) == 0
    out = tmp_path / "run"
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")  # as if killed after checkpoint-2
    capsys.readouterr()
    resume = ["train", "--out", str(out), "--resume", "--no-progress"]
    assert main([*resume, "--temperature", "0.05"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"midalign train: error: --resume: {out} was trained with a different config "
        "(align.temperature: 0.1 -> 0.05)"
    )
    assert main([*resume, "--temperature", "0.1", "--lora-r", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("step 3/4: loss ")
    assert printed[-1].startswith("trained 4 steps, best dev ")


def _pre_norm_pooled(model, batch, pool="mean", special=(0, 1, 2)):
    """Pooled layer-L states of the full forward, taken at the final norm's input (no early exit,
    no midalign pooling code): [2B, d]."""
    seen = []
    hook = decoder_stack(model).norm.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    hook.remove()
    w = pooling_mask(batch["input_ids"], batch["attention_mask"], pool, special).double()
    return (seen[0] * w[..., None]).sum(1) / w.sum(1, keepdim=True)


def test_base_statistics_and_dev_accuracy_recomputed_by_hand(tmp_path):
    """standardize with the base model's statistics at the last layer (L = 4, before the final
    norm): the saved μ, σ are the uniform mixture of the languages' rows, recomputed from full
    forwards; the logged dev top-1 accuracy and loss are recomputed from the saved adapter."""
    from midalign.data.pairs import encode_pairs, load_pairs, split_dev
    from midalign.modeling.loading import load_model
    from midalign.training.align_setup import dev_batches
    from midalign.training.align_stats import load_stats
    from midalign.training.losses import STD_FLOOR

    config = _config(
        tmp_path,
        "llama",
        model__dtype="float64",
        align__schedule="task",
        align__layers="4",
        align__normalize="standardize",
        align__stats="base",
        optim__max_steps=2,
    )
    out = tmp_path / "run"
    _run(config, out)
    mean, std = load_stats(out / "align_stats.safetensors", [4])
    # written through files.atomic_file: the modes of any other output, not safetensors' 0600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "align_stats.safetensors").stat().st_mode) == 0o666 & ~umask
    assert (out / "checkpoints" / "checkpoint-2" / "align_stats.safetensors").is_file()

    base, tokenizer = load_model(config.model.name, dtype="float64", device="cpu")
    tokenizer.padding_side = "right"
    pairs = load_pairs(config.data.align_data, config.data.align_langs)
    train_pairs, dev_pairs = split_dev(pairs, config.data.align_dev_pairs, config.optim.seed)
    rows, weights = [], []
    for items in train_pairs.values():  # 26 pairs each, fewer than stats_pairs: all of them
        h = _pre_norm_pooled(base, encode_pairs(tokenizer, items, 128))
        rows.append(h)
        weights.append(torch.full((len(h),), 1 / (len(h) * len(train_pairs)), dtype=h.dtype))
    h, w = torch.cat(rows), torch.cat(weights)
    mu = (w[:, None] * h).sum(0)
    var = (w[:, None] * (h - mu) ** 2).sum(0)
    sigma = torch.maximum(var, STD_FLOOR**2 * var.mean()).sqrt()
    f64 = torch.float64
    assert_same_numbers(mean[0], mu, f64)
    assert_same_numbers(std[0], sigma, f64)

    model = PeftModel.from_pretrained(base, str(out)).eval()
    correct, total, losses = 0, 0, []
    for batch in dev_batches(dev_pairs, tokenizer, config.align.batch_pairs, 128):
        z = (_pre_norm_pooled(model, batch) - mu) / sigma
        b = len(z) // 2
        x, y = z[:b], z[b:]
        cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(y, dim=-1).T
        for i in range(b):
            others = torch.cat([cos[i, :i], cos[i, i + 1 :]])
            correct += bool(cos[i, i] > others.max())
        total += b
        losses.append(torch.nn.functional.cross_entropy(cos / 0.1, torch.arange(b)).item())
    (logged,) = [r for r in read_log(out / "log.jsonl") if "eval_align_acc" in r]
    assert logged["eval_align_acc"] == correct / total
    assert total == 8 and 0 < correct < total  # neither none nor all found
    assert logged["eval_align_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-10)


def test_tensorboard_event_files_hold_the_logged_rows(tmp_path):
    """report_to tensorboard: <out>/tensorboard has the rows of log.jsonl as scalars (stored as
    float32 by tensorboard, hence the relative 1e-6)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _run(_config(tmp_path, optim__report_to=["tensorboard"], align__schedule="alternate"), out)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = read_log(out / "log.jsonl")
    for tag, key in (
        ("train/task_loss", "task_loss"),
        ("train/align_loss", "align_loss"),
        ("eval/align_acc", "eval_align_acc"),
    ):
        logged = [(r["step"], r[key]) for r in rows if key in r]
        scalars = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in scalars] == [s for s, _ in logged], tag
        assert [v for _, v in scalars] == pytest.approx([v for _, v in logged], rel=1e-6), tag
    assert not list((out / "checkpoints").glob("**/events.out.tfevents*"))


def test_epoch_seeded_order_is_one_generator_drawn_epoch_after_epoch():
    """``optim.data_order: seeded``: epoch e's order is the (e+1)-th draw of a generator seeded
    once (what a run that is never stopped draws), whichever epoch the sampler is asked for
    first, as a resumed run asks for its epoch; and the global random stream plays no part."""
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from midalign.training.alignment import EpochSeeded

    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11, 12]
    once = LengthGroupedSampler(4, lengths=lengths, generator=torch.Generator().manual_seed(7))
    drawn = [list(once) for _ in range(3)]  # consecutive epochs of one run
    assert drawn[0] != drawn[1] != drawn[2]
    seeded = EpochSeeded(LengthGroupedSampler(4, lengths=lengths), 7)
    for epoch in (2, 0, 1):  # a resumed run starts anywhere
        seeded.set_epoch(epoch)
        torch.manual_seed(epoch)  # the global stream, advanced differently: no effect
        assert list(seeded) == drawn[epoch]


def test_a_target_module_that_names_nothing_is_refused(tmp_path):
    """PEFT adapts the names that match and skips the rest: a typo (qkv_proj on a model with
    q_proj, k_proj, v_proj) trained fewer projections than asked, without a word."""
    c = _config(tmp_path, lora__target_modules=["q_proj", "qkv_proj"])
    with pytest.raises(InputError, match=r"^lora.target_modules: 'qkv_proj' names no module of "):
        _run(c, tmp_path / "run")
