"""`midalign run`: a recipe on a tiny model end to end, step reuse, statistics, bad recipes."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from midalign.cli import main
from midalign.errors import InputError
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.topic import LABELS
from midalign.experiments import runner as runner_module
from midalign.experiments.recipe import deep_merge, load_recipe, parse_recipe
from midalign.experiments.runner import Runner, RunOptions
from midalign.report.markdown import write_report
from midalign.report.stats import dev_alignment, group_means, mean_ci, paired_differences

WORDS = {
    "eng_Latn": "the a is of and to in human rights all everyone free equal dignity born".split(),
    "deu_Latn": "der die das und ist ein eine person people right law born free all".split(),
    "fra_Latn": "le la les et est une un dignity equal free human rights people law".split(),
}


def _write_sib200(root: Path, n: int = 10) -> Path:
    """A SIB-200-shaped folder: <code>/{train,dev,test}.tsv, the same index_ids in every
    language, distinct sentences of vocabulary words so the tiny tokenizer sees real tokens."""
    splits = {"train": range(0, n), "dev": range(n, n + 4), "test": range(n + 4, n + 10)}
    for lang, words in WORDS.items():
        (root / lang).mkdir(parents=True)
        for split, ids in splits.items():
            rows = ["index_id\tcategory\ttext"]
            for i in ids:
                text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 4))
                text += " " + " ".join(str(i))  # the id's digits: no sentence repeats
                rows.append(f"{i}\t{LABELS[i % len(LABELS)]}\t{text}")
            (root / lang / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _recipe(model: Path, data: Path) -> dict:
    sib = f"sib200:{data}"
    return {
        "name": "tiny",
        "model": str(model),
        "seeds": [1, 2],
        "task": {
            "name": "topic",
            "train": {"source": sib, "langs": ["eng"], "split": "train", "limit": 8},
            "dev": {"source": sib, "langs": ["eng"], "split": "dev"},
            "test": {"source": sib, "langs": ["eng", "deu", "fra"], "split": "test", "limit": 4},
            "groups": {"supervised": ["eng"], "transfer": ["deu", "fra"]},
        },
        "probe": {"data": sib, "langs": ["eng", "deu", "fra"], "split": "train", "layers": "1,3"},
        "train": {
            "data": {"align_data": sib, "align_langs": ["deu", "fra"], "align_split": "train"},
            "align": {"batch_pairs": 2, "layers": "2"},
            "optim": {
                "max_steps": 2,
                "batch_size": 2,
                "gradient_accumulation_steps": 2,
                "eval_steps": 1,
                "save_steps": 1,
                "logging_steps": 1,
            },
        },
        "eval": {"batch_size": 4, "max_new_tokens": 3},
        "systems": [
            {"name": "base", "zero_shot": True},
            {"name": "sft", "train": {"align": {"schedule": "task"}}},
            {"name": "align-mid", "train": {"align": {"schedule": "alternate"}}},
            {
                "name": "align-only",
                "train": {
                    "align": {"schedule": "align"},
                    "optim": {"max_steps": 1, "warmup_ratio": 0.0},  # lr 0 in a warm-up step
                },
                "evaluate": False,
                "probe": False,
            },
            {"name": "merged", "merge": {"task": "sft", "align": "align-only", "weight": 0.9}},
        ],
    }


@pytest.fixture
def recipe_file(tmp_path: Path, tiny_model_dir: Path) -> Path:
    data = _write_sib200(tmp_path / "sib200")
    recipe = _recipe(tiny_model_dir, data)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_paired_differences_by_hand() -> None:
    """x − sft per seed: a 0.1 and 0.2 → mean 0.15, sd 0.0707, CI t(0.975, 1) · sd / √2 =
    12.706 · 0.05 = 0.6353. The base model (seed "-") shares no seed with SFT: left out."""
    values = {
        "sft": {"1": {"a": 0.5, "average": 0.6}, "2": {"a": 0.7, "average": 0.8}},
        "x": {"1": {"a": 0.6, "average": 0.6}, "2": {"a": 0.9, "average": 0.5}},
        "base": {"-": {"a": 0.0, "average": 0.0}},
    }
    got = paired_differences(values, "sft")
    assert list(got) == ["x"]
    assert got["x"]["a"]["mean"] == pytest.approx(0.15)
    assert got["x"]["a"]["ci95"] == pytest.approx(12.7062 * 0.05, rel=1e-4)
    assert got["x"]["average"]["values"] == pytest.approx([0.0, -0.3])
    assert got["x"]["a"]["seeds"] == ["1", "2"]
    # paired, not unpaired: a constant offset with a large seed spread has CI 0
    values = {"sft": {"1": {"a": 0.1}, "2": {"a": 0.9}}, "y": {"1": {"a": 0.2}, "2": {"a": 1.0}}}
    assert paired_differences(values, "sft")["y"]["a"]["ci95"] == pytest.approx(0.0, abs=1e-12)


def test_group_means_match_probe_languages_to_task_groups() -> None:
    per = {"cym_Latn": 0.1, "jpn_Jpan": 0.3, "eng_Latn": 0.9, "deu_Latn": 0.5}
    groups = {"aligned": ["cym_Latn", "jpn_Jpan"], "supervised": ["eng"], "none": ["fra_Latn"]}
    assert group_means(per, groups) == pytest.approx({"aligned": 0.2, "supervised": 0.9})


def test_dev_alignment_reads_the_last_evaluation_of_each_seed(tmp_path: Path) -> None:
    for seed, acc in (("1", 0.5), ("2", 0.7)):
        rows = [
            {"step": 5, "eval_align_acc": 0.1, "eval_align_loss": 2.0},
            {"step": 7, "task_loss": 1.0},
            {"step": 10, "eval_align_acc": acc, "eval_align_loss": 1.0},
        ]
        (tmp_path / seed).mkdir()
        (tmp_path / seed / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = {
        "align": {seed: {"adapter": str(tmp_path / seed)} for seed in ("1", "2")},
        "sft": {"1": {"adapter": str(tmp_path / "missing")}},  # logged no alignment
    }
    got = dev_alignment(training)
    assert list(got) == ["align"] and got["align"]["step"] == 10
    assert got["align"]["acc"]["values"] == [0.5, 0.7]
    assert got["align"]["loss"]["mean"] == 1.0


def test_mean_ci_by_hand() -> None:
    # values 1, 2, 3: mean 2, sample sd 1; Student t with 2 degrees of freedom has the closed
    # form quantile t_p = (2p − 1)·√(2 / (4p(1 − p))), so t(0.975) = 0.95·√(2 / 0.0975) ≈ 4.3027
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0
    t = 0.95 * math.sqrt(2 / 0.0975)
    assert stat["ci95"] == pytest.approx(t / math.sqrt(3), rel=1e-12)
    assert mean_ci([0.5])["ci95"] is None


def test_deep_merge_keeps_both_sides() -> None:
    base = {"optim": {"lr": 1, "steps": 2}, "align": {"layers": "9"}}
    over = {"optim": {"steps": 5}, "model": {"name": "x"}}
    assert deep_merge(base, over) == {
        "optim": {"lr": 1, "steps": 5},
        "align": {"layers": "9"},
        "model": {"name": "x"},
    }
    assert base["optim"]["steps"] == 2  # not modified


def test_recipe_runs_end_to_end_and_reuses_steps(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(recipe_file), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "report" / "results.json").read_text())
    table = results["table"]
    assert list(table) == ["base", "sft", "align-mid", "merged"]  # align-only: evaluate false
    assert table["base"]["average"]["n"] == 1  # the base model is deterministic: one run
    for name in ("sft", "align-mid", "merged"):
        cell = table[name]["transfer"]
        assert cell["n"] == 2 and len(cell["values"]) == 2
        # the group is the mean of its languages, seed by seed
        raw = results["raw"]["scores"][name]
        for seed, value in zip(("1", "2"), cell["values"], strict=True):
            per = raw[seed]["per_language"]
            assert value == pytest.approx((per["deu_Latn"] + per["fra_Latn"]) / 2)
    assert set(results["retrieval"]["systems"]) == {"sft", "align-mid", "merged"}
    assert results["retrieval"]["layer"] == 2  # middle of the tiny model's 4 layers
    # probe.layers 1,3 lacks the report layer: the probe adds it
    probe = json.loads(next((out / "steps").glob("probe-base-*/results.json")).read_text())
    assert sorted(probe["per_layer"], key=int) == ["1", "2", "3"]
    for name in ("report.md", "scores.png", "retrieval.png", "correlation.png"):
        assert (out / "report" / name).is_file(), name
    report = (out / "report" / "report.md").read_text()
    assert "| merged |" in report and "supervised" in report
    # differences paired by seed against the first trained system, for scores and retrieval
    assert results["paired"]["reference"] == "sft"
    paired = results["paired"]["systems"]["align-mid"]["transfer"]
    sft, mid = (table[n]["transfer"]["values"] for n in ("sft", "align-mid"))
    assert paired["values"] == pytest.approx([m - s for m, s in zip(mid, sft, strict=True)])
    assert set(results["retrieval"]["paired"]) == {"align-mid", "merged"}
    assert "## Paired differences against sft" in report
    # each probed adapter's model card has its before/after retrieval
    (trained,) = (out / "steps").glob("train-align-mid-seed1-*")
    after = results["raw"]["retrieval"]["align-mid"]["1"]["per_language"]["deu_Latn"]
    before = results["retrieval"]["base"]["deu_Latn"]
    card = (trained / "README.md").read_text()
    assert f"| deu_Latn | {before * 100:.1f} | {after * 100:.1f} |" in card
    # every run with alignment dev pairs logs their accuracy, SFT too (a reference for the others)
    assert set(results["dev_alignment"]) == {"sft", "align-mid", "align-only"}

    # The merged adapter is the exact weighted sum of its two parents' (merge is tested
    # elsewhere); here: it was built from this run's adapters.
    merges = sorted((out / "steps").glob("merge-merged-seed1-*"))
    spec = json.loads((merges[0] / "spec.json").read_text())
    assert spec["weight"] == 0.9 and spec["task"].startswith("train-sft-seed1-")

    # A second run reuses every step.
    runner = Runner(load_recipe(recipe_file), RunOptions(out=out, progress=False))
    runner.run()
    assert runner.steps.ran == [] and len(runner.steps.reused) > 10

    # A renamed system reuses its steps: the hash is the identity, the name a label.
    values = yaml.safe_load(recipe_file.read_text())
    (system,) = (s for s in values["systems"] if s["name"] == "align-mid")
    system["name"] = "align middle"
    runner = Runner(parse_recipe(values, str(recipe_file)), RunOptions(out=out, dry_run=True))
    runner.run()
    assert runner.steps.ran == []
    assert any(name.startswith("train-align-mid-seed1-") for name in runner.steps.reused)
    # … but not a changed one
    system["train"]["align"]["temperature"] = 0.5
    runner = Runner(parse_recipe(values, str(recipe_file)), RunOptions(out=out, dry_run=True))
    runner.run()
    assert any(name.startswith("train-align_middle-seed1-") for name in runner.steps.ran)

    # Lose one finished evaluation: only it runs again.
    (evaluation,) = (out / "steps").glob("eval-align-mid-seed2-*")
    shutil.rmtree(evaluation)
    runner = Runner(load_recipe(recipe_file), RunOptions(out=out, progress=False))
    runner.run()
    assert [name.rsplit("-", 1)[0] for name in runner.steps.ran] == ["eval-align-mid-seed2"]


def test_changed_system_reruns_only_what_depends_on_it(recipe_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    values = yaml.safe_load(recipe_file.read_text())
    values["seeds"] = [1]
    recipe = parse_recipe(values, str(recipe_file))
    Runner(recipe, RunOptions(out=out, progress=False)).run()
    values["systems"][3]["train"]["optim"]["max_steps"] = 2  # the align-only adapter changes
    runner = Runner(parse_recipe(values, str(recipe_file)), RunOptions(out=out, dry_run=True))
    runner.run()
    assert sorted(name.rsplit("-", 1)[0] for name in runner.steps.ran) == [
        "eval-merged-seed1",
        "merge-merged-seed1",
        "probe-merged-seed1",
        "train-align-only-seed1",
    ]


def test_a_new_reading_of_the_data_redoes_every_step(
    recipe_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps whose data settings now read other examples (runner.READING) are not reused."""

    def steps() -> list[str]:
        runner = Runner(load_recipe(recipe_file), RunOptions(out=tmp_path / "run", dry_run=True))
        runner.run()
        return runner.steps.ran

    before = steps()
    monkeypatch.setattr(runner_module, "READING", runner_module.READING + 1)
    after = steps()
    assert len(after) == len(before) > 10 and not set(after) & set(before)


def test_seeds_option_runs_a_subset_with_the_full_runs_steps(
    recipe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"

    def steps(*options: str) -> list[str]:
        assert main(["run", str(recipe_file), "--out", str(out), "--dry-run", *options]) == 0
        found = (
            re.match(r"(?:done|to run) +(\S+)", line)
            for line in capsys.readouterr().out.splitlines()
        )
        return [m.group(1) for m in found if m]

    subset, full = steps("--seeds", "2"), steps()
    # seed 2's steps and the seedless ones (data, base probe, base eval), named and hashed alike
    assert subset == [name for name in full if "-seed1-" not in name]
    assert any("-seed2-" in name for name in subset)
    for bad in ("3", "1,x", ","):
        assert main(["run", str(recipe_file), "--out", str(out), "--seeds", bad]) == 2
        assert "--seeds:" in capsys.readouterr().err


def test_dry_run_says_what_each_step_reads_and_where_it_comes_from(
    recipe_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each step to run names the fields it reads; a table says where each source comes from,
    and the last line whether the run is offline or needs the hub, or data not found here (the
    paper recipes need the hub, and paper_mt's relative data/ folders)."""
    import huggingface_hub

    import midalign.data.hub

    monkeypatch.chdir(tmp_path)  # no data/ here
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(midalign.data.hub, "hub_offline", lambda: False)

    def dry_run(recipe: Path) -> list[str]:
        assert main(["run", str(recipe), "--out", str(tmp_path / recipe.stem), "--dry-run"]) == 0
        return capsys.readouterr().out.splitlines()

    lines = dry_run(recipe_file)
    model = yaml.safe_load(recipe_file.read_text())["model"]
    found = (re.fullmatch(r"to run   (\S+)-\w+(?:   (.*))?", line) for line in lines)
    reads = {m.group(1): m.group(2) for m in found if m}
    assert reads["data-train"] == "reads task.train"
    assert reads["train-sft-seed1"] == "reads model"  # SFT reads no alignment data
    assert reads["train-align-mid-seed1"] == "reads model, train.data.align_data"
    assert reads["eval-sft-seed1"] == "reads model, task.test"
    assert reads["probe-base"] == "reads model, probe.data"
    assert reads["merge-merged-seed1"] is None  # adapters of earlier steps only
    assert f"  model                  {model}: this machine (folder {model})" in lines
    assert lines[-1] == "offline: every source is on this machine"

    recipes = Path(__file__).parents[1] / "recipes"
    lines = dry_run(recipes / "paper_slots.yaml")
    assert "  model                  meta-llama/Meta-Llama-3-8B-Instruct: the hub" in lines
    assert "  task.train             hf:AmazonScience/massive: the hub" in lines
    assert (
        "  train.data.align_data  tatoeba:data/tatoeba: not found here (data/tatoeba, a path "
        "relative to the current folder)" in lines
    )
    assert lines[-1] == (
        "needs the hub for model, task.train, task.dev, probe.data, task.test; not found here: "
        "train.data.align_data"
    )
    assert dry_run(recipes / "paper_mt.yaml")[-1] == (
        "needs the hub for model, probe.data; not found here: task.train, task.dev, "
        "train.data.align_data, task.test[0], task.test[1]"
    )
    lines = dry_run(recipes / "paper_ner.yaml")
    assert (
        "  train.data.align_data  hf-tatoeba: the hub "
        "(sentence-transformers/parallel-sentences-tatoeba)" in lines
    )
    assert lines[-1] == (
        "needs the hub for model, task.train, task.dev, probe.data, train.data.align_data, "
        "task.test"
    )


def test_where_a_source_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The readers' rules: a path here is read from here; the forms that take a hub id go to
    the hub when no such path exists; any other path is missing, relative or not."""
    import huggingface_hub

    from midalign.data.origin import data_origin, model_origin

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "t.en").write_text("a\n")
    hub, here = "the hub", "this machine (folder org/name)"
    assert data_origin("hf:org/name").where == here  # a local copy of the repo
    assert data_origin("aya:CohereLabs/aya_collection").network == hub
    assert data_origin("hf:CohereLabs/x").where == hub
    assert data_origin("CohereLabs/x").where == hub  # a bare hub id
    assert data_origin("hf:flores_plus").where == "the hub (openlanguagedata/flores_plus)"
    assert data_origin("tatoeba:CohereLabs/x").missing  # tatoeba: takes a folder only
    assert data_origin("udhr:org/name=de,fr#train").where == here
    assert data_origin(f"parallel:{tmp_path / 't.en'},t.en").where == "this machine (2 files)"
    gone = data_origin(f"parallel:t.en,{tmp_path / 't.de'}")
    assert gone.missing and gone.where == f"not found here ({tmp_path / 't.de'})"
    assert model_origin("org/name").where == here
    assert model_origin("meta-llama/Meta-Llama-3-8B-Instruct").where == hub
    (tmp_path / "hf" / "models--meta-llama--Meta-Llama-3-8B-Instruct").mkdir(parents=True)
    cached = model_origin("meta-llama/Meta-Llama-3-8B-Instruct")
    assert (cached.where, cached.network) == ("the hub (in the local cache)", hub)


def test_a_training_step_trains_with_the_recipes_bf16_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's hash and config.yaml hold optim.bf16 resolved (false on a CPU without native
    bf16), while the run gets the recipe's ``auto``, so that its log says what decided it
    ("this CPU has no AMX/AVX512-BF16") rather than "as requested"."""
    import midalign.modeling.dtypes
    import midalign.training.run
    from midalign.modeling.dtypes import resolve_bf16
    from midalign.training.run import TrainResult

    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: None)
    given = []

    def fake_train(config, out, checkpoint, progress):
        given.append(config)
        return TrainResult(
            interrupted=False,
            global_step=1,
            best_checkpoint=None,
            best_metric=None,
            align_layers=[],
            auto_layer_retrieval=None,
            train_examples=2,
            align_pairs={},
            log_history=[],
        )

    monkeypatch.setattr(midalign.training.run, "train", fake_train)
    recipe = _recipe(_unloaded_model(tmp_path / "model"), tmp_path / "sib200")
    runner = Runner(parse_recipe(recipe, "r.yaml"), RunOptions(tmp_path / "run", progress=False))
    system = next(s for s in runner.recipe.systems if s.name == "sft")
    step = runner.train(system, 1, {"train": {"step": "data-train-abc", "path": "/t.jsonl"}})
    (config,) = given
    assert config.optim.bf16 == "auto"
    assert resolve_bf16(config.optim.bf16) == (False, "this CPU has no AMX/AVX512-BF16")
    saved = yaml.safe_load((tmp_path / "run" / "steps" / step["step"] / "config.yaml").read_text())
    assert saved["optim"]["bf16"] == "false"


def _unloaded_model(folder: Path) -> Path:
    """A model folder that passes the run's model check (its config.json), for runs that never
    load the model."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def test_test_sources_can_be_listed_and_a_missing_one_fails_first(tmp_path: Path) -> None:
    data = _write_sib200(tmp_path / "sib200")
    values = _recipe(_unloaded_model(tmp_path / "model"), data)
    sib = f"sib200:{data}"
    values["task"]["test"] = [
        {"source": sib, "langs": ["eng", "deu"], "split": "test", "limit": 4},
        {"source": sib, "langs": ["fra"], "split": "dev", "limit": 3},
    ]
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    assert runner.test_keys == ["eng_Latn", "deu_Latn", "fra_Latn"]
    examples = runner.test_examples()
    assert [ex.lang for ex in examples] == ["eng_Latn"] * 4 + ["deu_Latn"] * 4 + ["fra_Latn"] * 3
    # the second source's own split: 3 of fra dev's 4 rows (ids 10-13), sampled by id
    dev_fra = dict(line.split("\t")[::2] for line in (data / "fra_Latn" / "dev.tsv").open())
    assert [(ex.id, ex.text) for ex in examples[8:]] == [
        (i, dev_fra[i].strip()) for i in ("10", "11", "12")
    ]

    # a language may come from two splits, not twice from one
    values["task"]["test"][1]["langs"] = ["fra", "deu"]
    Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    values["task"]["test"].append({"source": sib, "langs": ["deu"], "split": "test"})
    with pytest.raises(InputError, match=rf"task.test\[2\]: deu_Latn already read from {sib}"):
        Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    values["task"]["test"].pop()

    # a test set that is not there stops the run before any step
    values["task"]["test"][1] = {"source": f"sib200:{tmp_path / 'nowhere'}", "langs": ["fra"]}
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run2"))
    with pytest.raises(InputError, match="nowhere"):
        runner.run()
    assert runner.steps.ran == [] and not (tmp_path / "run2" / "steps").exists()


def test_held_out_test_items_share_no_sentence_with_train_or_dev(tmp_path: Path) -> None:
    """Train on 8 of the 10 train ids in English, select on the 4 dev ids; test every
    language on the test split and on the train and dev ids that neither uses: 6 + 2 + 0
    sentences a language, none of them trained or selected on in any language."""
    data = _write_sib200(tmp_path / "sib200")
    values = _recipe(tmp_path / "model", data)
    sib = f"sib200:{data}"
    langs = ["eng", "deu", "fra"]
    values["task"]["test"] = [
        {"source": sib, "langs": langs, "split": "test"},
        {"source": sib, "langs": langs, "split": "train", "held_out": True},
    ]
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    examples = runner.test_examples()
    trained = {ex.id for ex in get_task("topic").read(sib, ["eng"], "train", 8)}
    assert len(trained) == 8
    by_lang: dict[str, set[str]] = {}
    for ex in examples:
        by_lang.setdefault(ex.lang, set()).add(ex.id)
    every_train_id = {str(i) for i in range(10)}
    for ids in by_lang.values():
        assert ids == {str(i) for i in range(14, 20)} | (every_train_id - trained)
        assert not ids & trained and not ids & {str(i) for i in range(10, 14)}  # no dev id
    assert len(examples) == 3 * (6 + 2)
    # a held-out source left empty is an error, not a silent nothing
    values["task"]["test"][1] = {"source": sib, "langs": langs, "split": "dev", "held_out": True}
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    with pytest.raises(InputError, match=r"task.test\[1\]: every sentence of .* \(dev\) is in"):
        runner.test_examples()
    values["task"]["train"]["held_out"] = True
    with pytest.raises(InputError, match="task.train.held_out: only test data can be held out"):
        parse_recipe(values, "r.yaml")


def test_held_out_setting_leaves_older_hashes_alone(tmp_path: Path) -> None:
    """``held_out: false`` (the default) hashes as before it existed: a recipe's steps keep
    their names; ``true`` is a new eval step."""
    data = _write_sib200(tmp_path / "sib200")
    values = _recipe(_unloaded_model(tmp_path / "model"), data)

    def eval_steps() -> list[str]:
        runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(tmp_path, dry_run=True))
        runner.run()
        return [name for name in runner.steps.ran if name.startswith("eval-")]

    before = eval_steps()
    values["task"]["test"]["held_out"] = False
    assert eval_steps() == before
    values["task"]["test"]["held_out"] = True
    after = eval_steps()
    assert len(after) == len(before) and not set(after) & set(before)


def test_report_written_for_a_dry_outcome(tmp_path: Path, recipe_file: Path) -> None:
    recipe = load_recipe(recipe_file)
    outcome = {
        "scores": {
            "sft": {
                "1": {
                    "metric": "accuracy",
                    "per_language": {"eng_Latn": 1.0, "deu_Latn": 0.5},
                    "groups": {"supervised": 1.0, "transfer": 0.5},
                    "average": 0.75,
                    "probe_scores": {"probe_scores.json": {"eng_Latn": 1.0, "deu_Latn": 0.5}},
                },
                "2": {
                    "metric": "accuracy",
                    "per_language": {"eng_Latn": 0.5, "deu_Latn": 0.25},
                    "groups": {"supervised": 0.5, "transfer": 0.25},
                    "average": 0.375,
                    "probe_scores": {"probe_scores.json": {"eng_Latn": 0.5, "deu_Latn": 0.25}},
                },
            }
        },
        "retrieval": {},
        "base_retrieval": None,
    }
    groups = {"supervised": ["eng_Latn"], "transfer": ["deu_Latn"]}
    summary = write_report(recipe, outcome, groups, tmp_path / "out")
    # two seeds 1.0 and 0.5: mean 0.75, sd √0.125; with 1 degree of freedom Student t is
    # Cauchy, t(0.975) = tan(0.475π) ≈ 12.706
    expected = math.tan(0.475 * math.pi) * math.sqrt(0.125) / math.sqrt(2)
    assert summary["table"]["sft"]["supervised"]["ci95"] == pytest.approx(expected)
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"| sft | 75.0 ± {expected * 100:.1f} | 37.5 ± " in report


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r.update(colour="red"),
            r"^r.yaml: unknown key colour \(known: name, model, seeds, task, probe, train, "
            r"systems, eval\)$",
        ),
        (lambda r: r["systems"][4]["merge"].update(task="nope"), "merge.task must name"),
        (lambda r: r["systems"].append({"name": "sft"}), "system names must be unique"),
        (lambda r: r.update(seeds=[]), "seeds must be a non-empty list"),
        (lambda r: r.update(seeds=[1, -1]), r"seeds: -1 is not a seed \(0\.\.4294967295\)"),
        (lambda r: r["task"].pop("test"), "^r.yaml: task.test is required$"),
        (lambda r: r["systems"][4]["merge"].update(weight=1.5), "merge.weight must be in"),
        (
            lambda r: r["probe"].update(normalize="whiten"),
            "probe.normalize must be one of none, center, standardize, not 'whiten'",
        ),
        (
            lambda r: r["probe"].update(dtype="float64"),
            "probe.dtype must be one of auto, float32, bfloat16, not 'float64'",
        ),
        (
            lambda r: r["eval"].update(dtype="fp16"),
            "eval.dtype must be one of auto, float32, bfloat16, not 'fp16'",
        ),
    ],
)
def test_bad_recipes(tmp_path: Path, change, message: str) -> None:
    recipe = _recipe(tmp_path / "model", tmp_path / "data")
    change(recipe)
    with pytest.raises(InputError, match=message):
        parse_recipe(recipe, "r.yaml")


def test_probe_normalize_none_is_the_default_and_one_step(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = _write_sib200(tmp_path / "sib200")
    values = _recipe(tiny_model_dir, data)
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    base = runner.probe("base", None)
    values["probe"]["normalize"] = "none"
    explicit = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    assert explicit.probe("base", None) == base  # same hash: the finished step is reused
    assert explicit.steps.reused == [base["step"]]
    results = json.loads((tmp_path / "run" / "steps" / base["step"] / "results.json").read_text())
    assert results["normalize"] == "none" and set(results["anisotropy"]) == {"1", "2", "3"}

    values["probe"]["normalize"] = "standardize"
    standardized = Runner(parse_recipe(values, "r.yaml"), RunOptions(out=tmp_path / "run"))
    step = standardized.probe("base", None)
    assert step["step"] != base["step"] and standardized.steps.ran == [step["step"]]
    results = json.loads((tmp_path / "run" / "steps" / step["step"] / "results.json").read_text())
    assert results["normalize"] == "standardize"
    # the diagnostics describe the model's raw states, whatever the scoring
    assert (
        results["anisotropy"]
        == json.loads((tmp_path / "run" / "steps" / base["step"] / "results.json").read_text())[
            "anisotropy"
        ]
    )


@pytest.mark.parametrize(
    ("normalize", "said"),
    [
        (None, "Scored on raw pooled states (`probe.normalize: none`, as LASER and the paper"),
        ("standardize", "Scored on standardised pooled states (`probe.normalize: standardize`"),
    ],
)
def test_report_says_which_states_retrieval_scored(
    tmp_path: Path, normalize: str | None, said: str
) -> None:
    values = _recipe(tmp_path / "model", tmp_path / "data")
    if normalize:
        values["probe"]["normalize"] = normalize
    probe = {
        "layer": 2,
        "per_layer": {"1": 0.5, "2": 0.25},
        "aggregate": 0.25,
        "per_language": {"eng_Latn": 0.5, "deu_Latn": 0.25},
    }
    outcome = {"scores": {}, "retrieval": {"sft": {"1": probe}}, "base_retrieval": probe}
    groups = {"supervised": ["eng_Latn"], "transfer": ["deu_Latn"]}
    summary = write_report(parse_recipe(values, "r.yaml"), outcome, groups, tmp_path / "out")
    assert summary["retrieval"]["normalize"] == (normalize or "none")
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert said in report


def test_bad_recipe_cli_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntask: [\n", encoding="utf-8")
    assert main(["run", str(path)]) == 2
    assert f"{path}:" in capsys.readouterr().err


RECIPES = sorted(
    p.relative_to(Path(__file__).parents[1] / "recipes")
    for p in (Path(__file__).parents[1] / "recipes").rglob("*.yaml")
    if "train" not in p.parts[-2:-1]
)


@pytest.mark.parametrize("name", [str(p) for p in RECIPES])
def test_shipped_recipes_parse_and_their_systems_are_valid_configs(name: str) -> None:
    from midalign.training.config import from_dict

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / name)
    assert recipe.systems
    for system in recipe.systems:
        if system.train is not None:
            from_dict(deep_merge(recipe.train, system.train), f"{name}: {system.name}")


def test_recipes_include_the_demo_and_the_papers() -> None:
    names = {str(p) for p in RECIPES}
    assert {
        "demo.yaml",
        "cpu_topic.yaml",
        "cpu_mt.yaml",
        "paper_slots.yaml",
        "paper_mt.yaml",
    } <= names


def test_training_step_killed_before_a_checkpoint_starts_over_cleanly(
    recipe_file: Path, tmp_path: Path
) -> None:
    values = yaml.safe_load(recipe_file.read_text())
    values["seeds"] = [1]
    values["systems"] = values["systems"][:2]  # base, sft
    recipe = parse_recipe(values, str(recipe_file))
    out = tmp_path / "run"
    Runner(recipe, RunOptions(out=out, progress=False)).run()
    (train_dir,) = (out / "steps").glob("train-sft-seed1-*")
    first = _losses(train_dir / "log.jsonl")
    # as if killed before its first checkpoint: no done.json, no checkpoint, a stale log
    (train_dir / "done.json").unlink()
    shutil.rmtree(train_dir / "checkpoints")
    runner = Runner(recipe, RunOptions(out=out, progress=False))
    runner.run()
    assert [n.rsplit("-", 1)[0] for n in runner.steps.ran] == ["train-sft-seed1"]
    # the evaluation's spec names the train step, not its files: it is reused
    assert _losses(train_dir / "log.jsonl") == first  # same seed, same run, no duplicates


def _losses(path: Path) -> list[tuple]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("eval_loss")) for r in rows]


LANG_HELP = "(use ISO 639-1, ISO 639-3 or FLoRes codes such as de, deu, deu_Latn)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["systems"][2]["train"]["align"].update(temperature=-1),
            "r.yaml: system align-mid: train.align.temperature must be positive, not -1.0",
        ),
        (
            lambda r: r["systems"][3]["train"]["optim"].update(warmup_ratio=0.03),
            "r.yaml: system align-only: train.optim.warmup_ratio 0.03 over 1 optimizer step "
            "(train.optim.max_steps 1): the inverse_sqrt schedule's learning rate is 0 throughout "
            "(its warm-up starts at 0), so training would not change the adapter; set "
            "train.optim.warmup_ratio 0 or train more steps",
        ),
        (
            lambda r: r["train"]["data"].update(align_langs=["deu", "xx"]),
            f"r.yaml: system sft: train.data.align_langs: unknown language code 'xx' {LANG_HELP}",
        ),
        (
            lambda r: r["systems"][1]["train"]["align"].update(temprature=1),
            "r.yaml: system sft: unknown key train.align.temprature (known: schedule, layers, "
            "temperature, pool, normalize, stats, stats_pairs, symmetric, weight, batch_pairs, "
            "gather_negatives, auto_pairs, matched)",
        ),
        (
            lambda r: r["systems"][1].update(train="fast"),
            "r.yaml: systems[1].train: expected a mapping, got 'fast'",
        ),
        (
            lambda r: r["task"].update(name="sentiment"),
            "r.yaml: task.name: unknown task 'sentiment' (one of slots, mt, ner, topic)",
        ),
        (
            lambda r: r["task"]["test"].update(langs=["eng", "xx"]),
            f"r.yaml: task.test.langs: unknown language code 'xx' {LANG_HELP}",
        ),
        (
            lambda r: r["task"].update(test=[r["task"]["test"], {"source": "x", "langs": "qq"}]),
            f"r.yaml: task.test[1].langs: unknown language code 'qq' {LANG_HELP}",
        ),
        (
            lambda r: r["task"]["groups"].update(transfer=["deu", "xx"]),
            f"r.yaml: task.groups.transfer: unknown language code 'xx' {LANG_HELP}",
        ),
        (
            lambda r: r["probe"].update(langs="eng,xx"),
            f"r.yaml: probe.langs: unknown language code 'xx' {LANG_HELP}",
        ),
        (
            lambda r: r["task"].update(name="mt"),  # topic's languages are not directions
            "r.yaml: task.train.langs: 'eng' translates eng_Latn into itself; a direction is "
            "SRC-TGT of two languages, e.g. de-en",
        ),
    ],
)
def test_recipe_is_validated_at_load_naming_the_field(tmp_path: Path, change, message) -> None:
    """Every trained system's config is validated as `midalign train` validates it, and every
    language list as the task reads it, when the recipe loads: not after its data, probe and
    evaluation steps. The fields are named as the recipe spells them."""
    recipe = _recipe(tmp_path / "model", tmp_path / "data")
    parse_recipe(recipe, "r.yaml")  # the base is fine
    change(recipe)
    with pytest.raises(InputError) as e:
        parse_recipe(recipe, "r.yaml")
    assert str(e.value) == message


def test_the_probe_pools_as_the_recipe_trains(tmp_path: Path) -> None:
    """A probe without a pool of its own takes the recipe's training pool (the paper recipes
    train with mean-all); the default pool leaves the step's hash as it was."""

    def probe_step(recipe: dict) -> tuple[dict, str]:
        runner = Runner(parse_recipe(recipe, "r.yaml"), RunOptions(tmp_path, dry_run=True))
        return runner.probe_settings(), runner.probe("base", None)["step"]

    recipe = _recipe(tmp_path / "model", tmp_path / "sib200")
    settings, default = probe_step(recipe)
    assert "pool" not in settings
    recipe["train"]["align"]["pool"] = "mean"
    assert probe_step(recipe) == (settings, default)
    recipe["train"]["align"]["pool"] = "mean-all"
    settings, trained = probe_step(recipe)
    assert settings["pool"] == "mean-all" and trained != default
    recipe["probe"]["pool"] = "mean"  # the recipe's own choice wins
    assert probe_step(recipe)[0]["pool"] == "mean"
    for name in ("paper_slots.yaml", "paper_mt.yaml", "paper_ner.yaml"):
        paper = load_recipe(Path(__file__).parents[1] / "recipes" / name)
        runner = Runner(paper, RunOptions(tmp_path, dry_run=True))
        assert runner.probe_settings()["pool"] == "mean-all"


def test_training_steps_hash_as_before_unless_a_new_setting_or_the_last_layer_matters(
    tmp_path: Path,
) -> None:
    """A run directory made before align.normalize/stats/stats_pairs (and the other later
    settings: matched, bf16, data_order, model.compile, data.align_pivot) existed reuses its
    training steps (their hash leaves those settings out at their default); a non-default
    value, an alignment layer that may be L (whose loss takes the state before the final
    norm), or unmatched ``alternate`` (whose G counted micro-batches of both kinds) does not."""
    from midalign.experiments.runner import Steps

    def step(recipe: dict, name: str) -> tuple[str, str]:
        runner = Runner(parse_recipe(recipe, "r.yaml"), RunOptions(tmp_path, dry_run=True))
        data = {"train": {"step": "data-train-abc", "path": "/t.jsonl"}}
        system = next(s for s in runner.recipe.systems if s.name == name)
        sections = runner.train_config(system, 1, data)
        for key in ("normalize", "stats", "stats_pairs", "matched"):  # the config as it was
            del sections["align"][key]
        del sections["optim"]["bf16"]
        del sections["optim"]["data_order"]
        del sections["model"]["compile"]
        del sections["data"]["align_pivot"]
        before = {"config": sections, "data": {"train": "data-train-abc"}}
        got = runner.train(system, 1, data)["step"]
        return got, Steps(tmp_path).folder(f"train-{name}-seed1", before).name

    recipe = _recipe(tmp_path / "model", tmp_path / "sib200")
    got, before = step(recipe, "sft")
    assert got == before
    got, before = step(recipe, "align-mid")  # layer "2": it could have been L
    assert got != before
    recipe["train"]["align"]["layers"] = "middle"
    got, before = step(recipe, "align-mid")  # alternate: G counted both kinds of micro-batch
    assert got != before
    recipe["systems"][2]["train"]["align"]["schedule"] = "joint"
    got, before = step(recipe, "align-mid")
    assert got == before
    recipe["train"]["align"]["normalize"] = "standardize"
    assert step(recipe, "align-mid")[0] != got


def test_training_steps_hash_as_before_unless_they_now_train_in_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``optim.bf16`` (default ``auto``) is resolved before hashing, as probe and eval resolve
    ``dtype``: every training step before it trained in float32, so a step that still does
    (``auto`` on a CPU without native bf16, ``false``, ``auto`` with float64 weights) hashes as
    those did, and one that would now train in bf16 mixed precision is a new step, whichever
    way it was asked for. The step's config records the resolved value."""
    import midalign.modeling.dtypes

    def step(recipe: dict) -> tuple[str, str]:
        runner = Runner(parse_recipe(recipe, "r.yaml"), RunOptions(tmp_path, dry_run=True))
        data = {"train": {"step": "data-train-abc", "path": "/t.jsonl"}}
        system = next(s for s in runner.recipe.systems if s.name == "sft")
        return runner.train(system, 1, data)["step"]

    recipe = _recipe(Path("/models/tiny"), Path("/data/sib200"))
    before = step(recipe)
    assert before == "train-sft-seed1-c658f003594e"  # as the code before optim.bf16 named it
    for value in ("false", "auto"):
        recipe["train"]["optim"]["bf16"] = value
        assert step(recipe) == before
    recipe["train"]["optim"]["bf16"] = "true"
    bf16 = step(recipe)
    assert bf16 != before
    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: "AMX")
    del recipe["train"]["optim"]["bf16"]  # auto, now on
    assert step(recipe) == bf16
    recipe["train"]["model"] = {"dtype": "float64"}  # exact reference weights: auto stays off
    float64 = step(recipe)
    recipe["train"]["optim"]["bf16"] = "false"
    assert step(recipe) == float64 != bf16


def test_probe_and_eval_steps_hash_as_before_unless_they_now_compute_in_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probe and eval steps load the model in ``dtype`` (``auto`` unless the recipe names one),
    resolved before hashing. Every such step computed in float32 before ``dtype`` existed, so a
    float32 step (``auto`` on a CPU without native bf16, or written out) hashes as those did and
    their run directories are reused; a step that would now compute in bfloat16 (``auto`` on an
    AMX CPU, or written out) is a new step, whichever way it was asked for."""
    import midalign.modeling.dtypes
    from midalign.experiments.runner import READING, Steps

    def steps(recipe: dict) -> tuple[str, str]:
        runner = Runner(parse_recipe(recipe, "r.yaml"), RunOptions(tmp_path, dry_run=True))
        base = next(s for s in runner.recipe.systems if s.name == "base")
        return runner.probe("base", None)["step"], runner.evaluate(base, None, None)["step"]

    recipe = _recipe(tmp_path / "model", tmp_path / "sib200")
    sib = recipe["probe"]["data"]
    # the specs as the runner wrote them before dtype existed, spelled out
    probe = {
        "model": recipe["model"],
        "adapter": None,
        "data": sib,
        "langs": ["eng", "deu", "fra"],
        "split": "train",
        "layers": "1,3",
        "reading": READING,
    }
    evaluation = {
        "model": recipe["model"],
        "adapter": None,
        "task": "topic",
        "test": {"source": sib, "langs": ["eng", "deu", "fra"], "split": "test", "limit": 4},
        "zero_shot": True,
        "eval": {"batch_size": 4, "max_new_tokens": 3},
        "groups": {"supervised": ["eng_Latn"], "transfer": ["deu_Latn", "fra_Latn"]},
        "reading": READING,
    }
    before = (
        Steps(tmp_path).folder("probe-base", probe).name,
        Steps(tmp_path).folder("eval-base", evaluation).name,
    )
    assert steps(recipe) == before  # auto → float32 here (conftest: no AMX, no AVX512-BF16)
    recipe["probe"]["dtype"] = recipe["eval"]["dtype"] = "float32"
    assert steps(recipe) == before

    recipe["probe"]["dtype"] = recipe["eval"]["dtype"] = "bfloat16"
    bf16 = steps(recipe)
    assert bf16[0] != before[0] and bf16[1] != before[1]
    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: "AMX")
    recipe["probe"]["dtype"] = recipe["eval"]["dtype"] = "auto"
    assert steps(recipe) == bf16
    del recipe["probe"]["dtype"], recipe["eval"]["dtype"]
    assert steps(recipe) == bf16
    recipe["probe"]["dtype"] = recipe["eval"]["dtype"] = "float32"  # asked for: as before
    assert steps(recipe) == before


def test_probe_and_eval_steps_load_the_resolved_dtype_and_record_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import midalign.modeling.dtypes
    import midalign.modeling.loading
    import midalign.probe.run

    loaded = []

    def spy(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        loaded.append(next(model.parameters()).dtype)
        return model, tokenizer

    real = midalign.modeling.loading.load_model
    monkeypatch.setattr(midalign.modeling.loading, "load_model", spy)
    monkeypatch.setattr(midalign.probe.run, "load_model", spy)
    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: "AVX512-BF16")
    data = _write_sib200(tmp_path / "sib200")
    values = _recipe(tiny_model_dir, data)
    values["eval"]["dtype"] = "float32"  # the recipe's own choice wins over auto
    runner = Runner(parse_recipe(values, "r.yaml"), RunOptions(tmp_path / "run", progress=False))
    probe = runner.probe("base", None)
    base = next(s for s in runner.recipe.systems if s.name == "base")
    evaluation = runner.evaluate(base, None, None)
    assert loaded == [torch.bfloat16, torch.float32]
    steps = tmp_path / "run" / "steps"
    assert json.loads((steps / probe["step"] / "results.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((steps / evaluation["step"] / "results.json").read_text())["dtype"] == (
        "float32"
    )


def test_steps_record_the_environment_of_each_attempt(tmp_path: Path, monkeypatch, caplog) -> None:
    """A step's done.json lists the environment of every attempt at it; a step finished in
    another environment than it started in (another thread count here) is flagged."""
    from midalign.experiments.runner import Steps, environment

    steps = Steps(tmp_path)

    def interrupted(folder: Path) -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        steps.run("x", {"a": 1}, interrupted)
    real = environment()
    assert real["torch_threads"] == torch.get_num_threads() and real["torch"] == torch.__version__
    monkeypatch.setattr(runner_module, "environment", lambda: {**real, "torch_threads": 99})
    steps.run("x", {"a": 1}, lambda folder: {"ok": 1})
    done = json.loads(next(tmp_path.glob("steps/x-*/done.json")).read_text())
    assert [s["torch_threads"] for s in done["environment"]] == [torch.get_num_threads(), 99]
    assert "ran in 2 attempts whose environments differ" in caplog.text
    caplog.clear()
    steps.run("y", {"a": 2}, lambda folder: {"ok": 1})  # one attempt: nothing to flag
    assert "environments differ" not in caplog.text


def test_report_of_a_probe_without_even_layers(tmp_path: Path, recipe_file: Path) -> None:
    """A probe of one odd layer has no mean over even layers (its aggregate is None): the report
    leaves that column out instead of failing."""
    recipe = load_recipe(recipe_file)
    run = {
        "metric": "accuracy",
        "per_language": {"eng_Latn": 1.0, "deu_Latn": 0.5},
        "groups": {"supervised": 1.0, "transfer": 0.5},
        "average": 0.75,
        "probe_scores": {"probe_scores.json": {"eng_Latn": 1.0, "deu_Latn": 0.5}},
    }
    probe = {"layer": 3, "aggregate": None, "per_language": {"eng_Latn": 0.5, "deu_Latn": 0.25}}
    outcome = {
        "scores": {"sft": {"1": run, "2": run}},
        "retrieval": {"sft": {"1": probe, "2": probe}},
        "base_retrieval": probe,
    }
    groups = {"supervised": ["eng_Latn"], "transfer": ["deu_Latn"]}
    summary = write_report(recipe, outcome, groups, tmp_path / "out")
    assert summary["retrieval"]["systems_aggregate"] == {"sft": None}
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "| base | – | 50.0 | 25.0 |" in report
    # the group table has no "even layers" column
    assert "| system | supervised | transfer |\n" in report and "| base | 50.0 | 25.0 |" in report
