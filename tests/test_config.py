from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import shared_data

from midalign.cli import build_parser
from midalign.cli.train import resolve_config
from midalign.errors import InputError
from midalign.training.config import (
    SECTIONS,
    TrainConfig,
    apply_overrides,
    diff,
    from_dict,
    load_config,
    option_names,
)
from midalign.training.config_checks import validate

REPO = Path(__file__).resolve().parents[1]


def _args(*argv: str):
    return build_parser().parse_args(["train", "--out", "runs/x", *argv])


def test_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.lora.r, c.lora.alpha, c.lora.dropout) == (8, 16, 0.1)
    assert c.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert (c.optim.learning_rate, c.optim.lr_scheduler, c.optim.warmup_ratio) == (
        5e-4,
        "inverse_sqrt",
        0.03,
    )
    assert (c.optim.epochs, c.optim.eval_steps, c.optim.early_stopping_patience) == (5, 200, 5)
    assert c.optim.gradient_accumulation_steps == 4
    assert (c.align.temperature, c.align.layers, c.align.schedule) == (0.1, "middle", "alternate")


def test_yaml_then_command_line_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "align:\n  temperature: 1.5\n  symmetric: true\n  layers: 9,18\n"
        "data:\n  align_langs: [cym, jpn]\noptim:\n  batch_size: 2\n"
    )
    args = _args(
        "--config",
        str(recipe),
        "--temperature",
        "0.5",
        "--optim.batch_size",
        "3",
        "--lora-r",
        "4",
        "--align-langs",
        "swh,tgl",
    )
    config = resolve_config(args)
    assert config.align.temperature == 0.5  # command line beats YAML
    assert config.align.symmetric is True  # YAML beats default
    assert config.align.layers == "9,18"
    assert config.optim.batch_size == 3
    assert config.lora.r == 4
    assert config.data.align_langs == ["swh", "tgl"]
    assert config.model.name == "default"


def test_round_trip_through_yaml(tmp_path):
    config = TrainConfig()
    apply_overrides(config, {"align.temperature": "2", "data.task_data": "t.jsonl"})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    again = load_config(path)
    assert again == config
    assert diff(config, again) == []
    again.align.pool = "mean-all"
    assert diff(config, again) == ["align.pool"]


def test_unknown_keys_and_bad_values_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("align:\n  temprature: 0.1\n")
    with pytest.raises(InputError, match=r"bad.yaml: unknown key align.temprature"):
        load_config(path)
    sections = r"\(known: model, lora, data, align, optim\)"
    with pytest.raises(InputError, match=r"x.yaml: unknown key optimizer " + sections):
        from_dict({"optimizer": {}}, "x.yaml")
    with pytest.raises(InputError, match=r"x.yaml: optim.batch_size: expected int, got 'many'"):
        from_dict({"optim": {"batch_size": "many"}}, "x.yaml")
    with pytest.raises(InputError, match=r"--symmetric: expected bool"):
        apply_overrides(TrainConfig(), {"align.symmetric": "perhaps"})
    path.write_text("align: [1\n")
    with pytest.raises(InputError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(path)


def test_help_documents_every_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    # argparse wraps lines (also at hyphens): compare without whitespace
    text = "".join(capsys.readouterr().out.split())
    for options in option_names().values():
        for option in options:
            assert option in text, option
    for cls in SECTIONS.values():
        for f in fields(cls):
            assert "".join(f.metadata["help"].split()) in text, (cls.__name__, f.name)


def _valid(**changes) -> TrainConfig:
    config = TrainConfig()
    config.data.task_data = "train.jsonl"
    config.data.align_data = "tatoeba:DIR"
    config.data.align_langs = ["cym"]
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    return config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"align__temperature": 0.0}, "--temperature must be positive"),
        ({"align__temperature": -1.0}, "--temperature must be positive"),
        ({"align__schedule": "both"}, "--schedule must be one of"),
        ({"data__align_langs": []}, "--align-langs: give at least one language"),
        ({"data__task_data": None}, "--task-data is required by the alternate schedule"),
        ({"align__schedule": "align"}, "--max-steps must be given"),
        # once a KeyError at the first evaluation, the run folder deleted (issue 30)
        (
            {"align__schedule": "align", "optim__max_steps": 4, "data__dev_data": "dev.jsonl"},
            r"^--dev-data: the align schedule trains no task, so it has no dev task loss; its "
            r"evaluations use held-out alignment pairs \(--align-dev-pairs\): leave the dev "
            r"data out$",
        ),
        ({"optim__save_steps": 150}, "must be a multiple of --eval-steps"),
        ({"align__batch_pairs": 1}, "--align-batch-pairs must be at least 2"),
        ({"align__pool": "max"}, "--pool must be one of mean, mean-all, not 'max'"),
        ({"align__normalize": "whiten"}, "--normalize must be one of none, center, standardize"),
        ({"align__stats": "dev"}, "--align-stats must be one of batch, base, not 'dev'"),
        ({"align__stats_pairs": 0}, "--align-stats-pairs must be positive"),
        (
            {"align__schedule": "alternate-steps", "align__matched": True},
            "--align-matched: alternate-steps has no matched form",
        ),
        ({"optim__data_order": "random"}, "--data-order must be global or seeded, not 'random'"),
        # a new user's trial (issue 30): each once a traceback or a silently wrong run
        ({"lora__alpha": 0}, "--lora-alpha must be positive, not 0"),
        ({"lora__target_modules": []}, "--target-modules: give at least one projection"),
        ({"data__align_max_pairs": -1}, "--align-max-pairs must be positive, not -1"),
        ({"align__auto_pairs": 0}, "--auto-pairs must be positive, not 0"),
        ({"optim__seed": -1}, r"seed must be in 0\.\.4294967295, not -1"),
        ({"optim__seed": 10**20}, r"seed must be in 0\.\.4294967295"),
        ({"optim__lr_scheduler": "cosin"}, "must be one of linear, cosine.*not 'cosin'"),
        ({"optim__report_to": ["nosuchlogger"]}, "'nosuchlogger' is not a logger transformers"),
        # a run of no steps: once blamed on a warm-up ratio of 0, or "-12 optimizer step"
        (
            {"optim__epochs": 0.0},
            r"^--epochs must be a positive number of passes over the task "
            r"data, not 0 \(or give --max-steps\)$",
        ),
        ({"optim__epochs": -1.0}, "--epochs must be a positive number .*, not -1 "),
        ({"optim__epochs": math.nan}, "--epochs must be a positive number .*, not nan "),
        ({"optim__epochs": math.inf, "optim__max_steps": 5}, "--epochs .*, not inf "),
        (
            {"optim__max_steps": 0},
            r"^--max-steps must be positive, or -1 to count in --epochs, "
            r"not 0$",
        ),
        ({"optim__max_steps": -2}, "--max-steps must be positive, or -1 .*, not -2"),
    ],
)
def test_validate_rejects(changes, message):
    validate(_valid())  # the base is fine
    with pytest.raises(InputError, match=message):
        validate(_valid(**changes))


def test_epochs_are_not_counted_when_max_steps_is_given():
    validate(_valid(optim__epochs=0.0, optim__max_steps=5))
    validate(_valid(optim__epochs=0.5))  # half a pass: at least one step


def test_float16_weights_are_refused_on_a_cpu(monkeypatch):
    """Gemma 3 270M's loss is NaN in float16 on a CPU before any update, which the divergence
    check reported as "lower --learning-rate"; a GPU trains float16 weights."""
    import torch

    from midalign.experiments.recipe import parse_recipe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError) as e:
        validate(_valid(model__dtype="float16"))
    assert str(e.value) == (
        "--dtype float16 is refused on a CPU (no CUDA device here): its activations overflow to "
        "NaN before any update (Gemma 3 270M's loss is NaN at the first step); use float32 (the "
        "default) or bfloat16"
    )
    validate(_valid(model__dtype="bfloat16"))
    data = {"source": "udhr", "langs": ["deu"]}
    recipe = {
        "task": {"name": "mt", "train": data, "test": data},
        "train": {"model": {"dtype": "float16"}, "align": {"schedule": "task"}},
        "systems": [{"name": "sft", "train": {}}],
    }
    with pytest.raises(InputError, match=r"^r.yaml: system sft: train.model.dtype float16 is "):
        parse_recipe(recipe, "r.yaml")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    validate(_valid(model__dtype="float16"))


@pytest.mark.parametrize("recipe", ["cpu_demo.yaml", "paper_alternate.yaml"])
def test_recipes_load_and_validate(recipe):
    config = load_config(REPO / "recipes" / "train" / recipe)
    validate(config)
    assert config.align.schedule == "alternate" and config.align.layers == "middle"
    if recipe == "paper_alternate.yaml":  # the paper's: its pooling, its five languages
        assert config.align.pool == "mean-all" and config.align.batch_pairs == 32
        assert config.data.align_langs == ["cym", "jav", "jpn", "swh", "tgl"]


@pytest.mark.parametrize("recipe", ["cpu_demo.yaml", "paper_alternate.yaml"])
def test_recipes_alignment_data_has_their_languages(recipe):
    """Each training recipe's alignment source holds every one of its languages: read with
    ../shared/data's copy of LASER's Tatoeba standing in for the recipe's folder. (The paper
    recipe once read hf-tatoeba, which has none of cy, jv, sw, tl: it could not run.)"""
    from midalign.data.pairs import load_pairs

    config = load_config(REPO / "recipes" / "train" / recipe)
    kind, _, folder = config.data.align_data.partition(":")
    assert kind == "tatoeba", config.data.align_data
    local = shared_data("tatoeba")
    pairs = load_pairs(f"tatoeba:{local}", config.data.align_langs, config.data.align_split)
    assert len(pairs) == len(config.data.align_langs)
    assert all(len(p) >= 100 for p in pairs.values()), {k: len(p) for k, p in pairs.items()}


def test_normalize_choices_are_the_losses():
    from midalign.training.config import NORMALIZE
    from midalign.training.losses import NORMALIZE as LOSS_NORMALIZE

    assert NORMALIZE == LOSS_NORMALIZE


def test_a_run_whose_every_step_is_warm_up_is_refused():
    """transformers' warm-up gives lr = peak · step / warmup at steps 0, 1, …: the first step
    always has lr 0, so one step with any warm-up (⌈1 · 0.03⌉ = 1 step) trains nothing."""
    from midalign.training.warmup import no_learning

    with pytest.raises(InputError) as e:
        validate(_valid(optim__max_steps=1))
    assert str(e.value) == (
        "--warmup-ratio 0.03 over 1 optimizer step (--max-steps 1): the inverse_sqrt schedule's "
        "learning rate is 0 throughout (its warm-up starts at 0), so training would not change "
        "the adapter; set --warmup-ratio 0 or train more steps"
    )
    validate(_valid(optim__max_steps=1, optim__warmup_ratio=0.0))
    validate(_valid(optim__max_steps=2))  # step 2 is past the 1-step warm-up: lr = peak
    validate(_valid(optim__max_steps=1, optim__lr_scheduler="constant"))  # no warm-up
    assert [no_learning(s, 0.03, 1) for s in ("linear", "cosine", "constant_with_warmup")] == [
        True,
        True,
        True,
    ]
    assert not no_learning("linear", 0.5, 2)  # warm-up of 1 step: lr 0, then the peak
    assert no_learning("linear", 0.0, 1) is False
