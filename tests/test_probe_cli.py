"""`midalign probe` end to end on a tiny saved model and small line-aligned files."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import spy_loaded_dtypes
from safetensors.torch import load_file

from midalign.cli import main

SENTENCES = {
    "eng_Latn": [
        "all human beings are born free",
        "everyone is equal",
        "the law",
        "people of the world",
        "a right",
        "dignity and rights",
    ],
    "deu_Latn": [
        "der mensch ist frei",
        "ein recht",
        "die person",
        "das und die",
        "der law",
        "eine eine",
    ],
    "fra_Latn": ["le droit", "la loi est la loi", "les gens", "et et", "une personne", "le la les"],
}


def _files(tmp_path: Path, sentences: dict[str, list[str]] = SENTENCES) -> str:
    paths = []
    for lang, lines in sentences.items():
        path = tmp_path / f"text.{lang}"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(str(path))
    return "parallel:" + ",".join(paths)


def _probe(model_dir: Path, data: str, out: Path, *extra: str) -> int:
    """The exit code of `midalign probe ...` (argparse's own errors exit via SystemExit)."""
    try:
        return main(
            [
                "probe",
                "--model",
                str(model_dir),
                "--data",
                data,
                "--langs",
                "en,de,fr",
                "--k",
                "2",
                "--out",
                str(out),
                "--no-progress",
                *extra,
            ]
        )
    except SystemExit as e:
        return e.code


def test_probe_writes_results_csvs_plots_and_embeddings(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _probe(tiny_model_dir, _files(tmp_path), out, "--save-embeddings") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["layers"] == [0, 1, 2, 3, 4]
    assert results["config"]["langs"] == ["eng_Latn", "deu_Latn", "fra_Latn"]
    per_layer = results["per_layer"]
    assert set(per_layer) == {"0", "1", "2", "3", "4"}
    for layer in ("0", "2", "4"):
        rows = list(csv.DictReader(open(out / f"pairs_layer{layer}.csv")))
        assert len(rows) == 6  # 3 · 2 ordered pairs
        accs = [float(r["accuracy"]) for r in rows]
        # every accuracy is a share of 6 sentences, and the layer mean is their mean
        assert all(abs(a * 6 - round(a * 6)) < 1e-4 for a in accs)  # 6 decimals in the CSV
        assert per_layer[layer]["mean"] == pytest.approx(sum(accs) / 6, abs=1e-5)
    # the model's number: mean over even layers 2 and 4 (0 = embeddings excluded)
    assert results["aggregate"] == pytest.approx(
        (per_layer["2"]["mean"] + per_layer["4"]["mean"]) / 2
    )
    for png in ("accuracy_by_layer.png", "language_by_layer.png", "pair_matrix_layer2.png"):
        assert (out / png).stat().st_size > 1000
    index = json.loads((out / "embeddings" / "index.json").read_text())
    side = index["sides"]["deu_Latn"]
    assert side["file"] == "side001_deu_Latn.safetensors"  # docs/probe.md: side<NNN>_<side>
    tensors = load_file(out / "embeddings" / side["file"])
    assert sorted(tensors) == [f"layer_{i}" for i in range(5)]
    assert tuple(tensors["layer_3"].shape) == (6, 32)
    assert "mean over even layers" in capsys.readouterr().out


def test_existing_out_is_refused_without_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _probe(tiny_model_dir, _files(tmp_path), out, "--layers", "1") == 0
    capsys.readouterr()
    assert _probe(tiny_model_dir, _files(tmp_path), out) == 2
    assert capsys.readouterr().err == (
        f"midalign probe: error: --out: {out} already exists (pass --overwrite to replace it)\n"
    )
    assert (out / "pairs_layer1.csv").exists()
    assert _probe(tiny_model_dir, _files(tmp_path), out, "--overwrite", "--layers", "2") == 0
    assert not (out / "pairs_layer1.csv").exists() and (out / "pairs_layer2.csv").exists()


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_a_megabyte_line_is_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    """A file without its line breaks: one forward of it would need tens of gigabytes."""
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    long = dict(SENTENCES, deu_Latn=["frei " * 209_715, *SENTENCES["deu_Latn"][1:]])
    assert _probe(tiny_model_dir, _files(tmp_path, long), tmp_path / "run") == 2
    assert capsys.readouterr().err == (
        f"midalign probe: error: {tmp_path / 'text.deu_Latn'}:1: sentence of 1048574 characters, "
        "too long for --max-tokens 2048 (a missing line break?)\n"
    )


def test_one_language_is_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    one = _files(tmp_path, {"eng_Latn": SENTENCES["eng_Latn"]})
    assert _probe(tiny_model_dir, one, tmp_path / "run", "--langs", "eng") == 2
    assert capsys.readouterr().err == (
        "midalign probe: error: --langs eng: the probe needs at least 2 distinct languages; "
        "got 1 (eng_Latn)\n"
    )


def test_a_group_of_a_language_not_probed_is_refused_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    code = _probe(tiny_model_dir, _files(tmp_path), tmp_path / "run", "--group", "low=fr,sw,jv")
    assert code == 2
    assert capsys.readouterr().err == (
        "midalign probe: error: --group low: swh_Latn, jav_Latn not among the probed languages "
        "(eng_Latn, deu_Latn, fra_Latn)\n"
    )


def test_without_langs_parallel_files_are_named_by_their_suffixes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    data = _files(tmp_path)
    argv = ["probe", "--model", str(tiny_model_dir), "--data", data, "--k", "2", "--layers", "1"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["langs"] == ["eng_Latn", "deu_Latn", "fra_Latn"]  # not the demo preset


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "6"], "--k 6 must be between 1 and the number of sentences minus one (5)"),
        (
            ["--layers", "2,9"],
            "--layers: layer 9 is out of range; this model has layers 0 (embeddings) to 4",
        ),
        (["--langs", "en,xx"], "unknown language code 'xx'"),
        (["--batch-tokens", "0"], "argument --batch-tokens: must be positive, not 0 (see --help)"),
    ],
)
def test_bad_options_give_one_line_and_no_output(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert _probe(tiny_model_dir, _files(tmp_path), out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".run.tmp-*"))


def test_ragged_files_name_both_files(tiny_model_dir, tmp_path, capsys):
    ragged = dict(SENTENCES, fra_Latn=SENTENCES["fra_Latn"][:5])
    assert _probe(tiny_model_dir, _files(tmp_path, ragged), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "text.fra_Latn" in err and "text.eng_Latn" in err


def test_model_folder_without_config_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _probe(tmp_path / "empty", _files(tmp_path), tmp_path / "run") == 2
    assert "has no config.json" in capsys.readouterr().err


def test_adapter_for_another_base_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    from conftest import tiny_model
    from peft import LoraConfig, get_peft_model

    other = get_peft_model(
        tiny_model("llama", n_layers=2), LoraConfig(r=2, target_modules=["q_proj"])
    )
    # a hidden size the tiny Gemma 3 does not have
    other.base_model.model.model.layers[
        0
    ].self_attn.q_proj.lora_A.default.weight.data = other.base_model.model.model.layers[
        0
    ].self_attn.q_proj.lora_A.default.weight.data[:, :16]
    other.save_pretrained(tmp_path / "adapter")
    code = _probe(
        tiny_model_dir, _files(tmp_path), tmp_path / "run", "--adapter", str(tmp_path / "adapter")
    )
    assert code == 2
    assert "does not fit this model" in capsys.readouterr().err


def test_normalize_is_recorded_applied_to_the_raw_states_and_anisotropy_is_written(
    tiny_model_dir, tmp_path, capsys
):
    from midalign.probe.anisotropy import anisotropy
    from midalign.probe.retrieval import all_pairs_accuracy

    out = tmp_path / "run"
    data = _files(tmp_path)
    args = ("--layers", "1,3", "--normalize", "standardize", "--save-embeddings")
    assert _probe(tiny_model_dir, data, out, *args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["normalize"] == "standardize"
    # the saved embeddings are the raw states; standardised by hand, per layer over all 18
    # sentences, they give the written accuracies
    index = json.loads((out / "embeddings" / "index.json").read_text())
    langs = ["eng_Latn", "deu_Latn", "fra_Latn"]
    raw = {lang: load_file(out / "embeddings" / index["sides"][lang]["file"]) for lang in langs}
    for layer in ("1", "3"):
        states = torch.stack([raw[lang][f"layer_{layer}"] for lang in langs]).double()  # [3, 6, d]
        every = states.reshape(-1, states.shape[-1])
        by_hand = (states - every.mean(dim=0)) / every.std(dim=0, correction=0)
        acc = all_pairs_accuracy(by_hand[None], k=2)[0]  # [3, 3]
        rows = {
            (r["source"], r["target"]): float(r["accuracy"])
            for r in csv.DictReader(open(out / f"pairs_layer{layer}.csv"))
        }
        for (s, src), (t, tgt) in itertools.permutations(enumerate(langs), 2):
            assert rows[src, tgt] == pytest.approx(acc[s, t].item(), abs=1e-6)
        # anisotropy of the raw states, every probed layer
        expected = anisotropy(every, torch.arange(6).repeat(3))
        diag = results["anisotropy"][layer]
        assert diag["mean_cosine"] == pytest.approx(expected["mean_cosine"], rel=1e-9)
        assert diag["top_pc_share"] == pytest.approx(expected["top_pc_share"], rel=1e-9)
        assert [t["dim"] for t in diag["top_dims"]] == [t["dim"] for t in expected["top_dims"]]
        assert len(diag["top_dims"]) == 3 and 0 < diag["mean_norm_ratio"] <= 1
    assert (out / "anisotropy.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "xsim on standardised states" in printed


def test_normalize_defaults_to_none(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _probe(tiny_model_dir, _files(tmp_path), out, "--layers", "2") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["normalize"] == "none"
    assert set(results["anisotropy"]) == {"2"}
    assert "xsim on raw states" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("feature", "extra", "dtype", "reason"),
    [
        (None, (), "float32", "this CPU has no AMX/AVX512-BF16"),
        ("AMX", (), "bfloat16", "this CPU has AMX"),
        ("AMX", ("--dtype", "float32"), "float32", "as requested"),
    ],
)
def test_dtype_auto_is_resolved_loaded_and_recorded(
    tiny_model_dir, tmp_path, monkeypatch, feature, extra, dtype, reason
):
    import midalign.modeling.dtypes
    import midalign.probe.run

    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: feature)
    loaded = spy_loaded_dtypes(monkeypatch, midalign.probe.run)
    out = tmp_path / "run"
    assert _probe(tiny_model_dir, _files(tmp_path), out, "--layers", "2", *extra) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    requested = extra[1] if extra else "auto"
    assert (config["dtype"], config["dtype_requested"], config["dtype_reason"]) == (
        dtype,
        requested,
        reason,
    )
    assert loaded == [getattr(torch, dtype)]
    # --compile auto: float32 stays eager unmeasured; bf16 is measured (stubbed in tests)
    assert config["compile"]["mode"] == "auto" and not config["compile"]["on"]
    assert ("float32" in config["compile"]["reason"]) == (dtype == "float32")
