from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import assert_same_numbers, tiny_model
from peft import LoraConfig, PeftModel, get_peft_model

from midalign.errors import InputError
from midalign.merge import merge_adapters


def _adapter(path, seed, r, alpha, targets, rslora=False, base=None, scale=0.1):
    """A LoRA adapter with random (non-zero) A and B on ``base`` (default: a tiny Llama),
    saved in PEFT format."""
    model = get_peft_model(
        base if base is not None else tiny_model("llama", n_layers=2),
        LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, use_rslora=rslora),
    )
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=g) * scale
    model.save_pretrained(path)
    return path


def _delta(adapter) -> dict[str, torch.Tensor]:
    """ΔW of every linear weight, through PEFT's own merge (an independent route)."""
    base = tiny_model("llama", n_layers=2).state_dict()
    merged = PeftModel.from_pretrained(tiny_model("llama", n_layers=2), adapter).merge_and_unload()
    return {k: v - base[k] for k, v in merged.state_dict().items()}


def test_merged_update_equals_weighted_sum_of_updates(tmp_path):
    task = _adapter(tmp_path / "task", 1, r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    align = _adapter(
        tmp_path / "align", 2, r=2, alpha=16, targets=["q_proj", "o_proj"], rslora=True
    )
    config = merge_adapters([task, align], [0.9, 0.1], tmp_path / "merged")
    assert config["r"] == 6 and config["lora_alpha"] == 6
    assert config["target_modules"] == ["down_proj", "o_proj", "q_proj", "v_proj"]
    d_task, d_align, d_merged = _delta(task), _delta(align), _delta(tmp_path / "merged")
    touched = 0
    for key, d in d_merged.items():
        expected = 0.9 * d_task[key] + 0.1 * d_align[key]
        # |ΔW| < 0.2 here, so float32 rounding of base + ΔW is < 2e-8: 1e-6 is the mathematics
        torch.testing.assert_close(d, expected, atol=1e-6, rtol=0)
        touched += bool(expected.abs().sum() > 0)
    assert touched == 2 * 4  # 4 target kinds × 2 layers


def test_merged_model_outputs_equal_base_with_both_weighted_updates(tmp_path):
    task = _adapter(tmp_path / "task", 3, r=4, alpha=8, targets=["q_proj", "k_proj"])
    align = _adapter(tmp_path / "align", 4, r=4, alpha=8, targets=["q_proj", "k_proj"])
    merge_adapters([task, align], [0.7, 0.3], tmp_path / "merged")
    reference = tiny_model("llama", n_layers=2)
    d_task, d_align = _delta(task), _delta(align)
    reference.load_state_dict(
        {k: v + 0.7 * d_task[k] + 0.3 * d_align[k] for k, v in reference.state_dict().items()}
    )
    merged = PeftModel.from_pretrained(tiny_model("llama", n_layers=2), tmp_path / "merged").eval()
    ids = torch.randint(3, 128, (2, 9))
    with torch.no_grad():
        assert_same_numbers(merged(ids).logits, reference(ids).logits, torch.float32)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.9, 0.2], "must sum to 1"),
        ([1.5, -0.5], "must be non-negative"),
        ([1.0], "1 weights for 2 adapters"),
        ([float("nan"), 0.1], r"must be finite numbers, got \[nan, 0.1\]"),
        ([float("inf"), 0.0], r"must be finite numbers, got \[inf, 0.0\]"),
    ],
)
def test_bad_weights(tmp_path, weights, message):
    a = _adapter(tmp_path / "a", 1, 2, 4, ["q_proj"])
    b = _adapter(tmp_path / "b", 2, 2, 4, ["q_proj"])
    with pytest.raises(InputError, match=message):
        merge_adapters([a, b], weights, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _set_base(adapter, base):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (adapter / "adapter_config.json").write_text(json.dumps(config))


def test_adapters_of_different_base_models_are_refused(tmp_path, monkeypatch):
    """The rule `--adapter` applies too (midalign.models.same_base): one folder spelled two
    ways is one base; an adapter that names none fits any."""
    a = _adapter(tmp_path / "a", 1, 2, 4, ["q_proj"])
    b = _adapter(tmp_path / "b", 2, 2, 4, ["q_proj"])
    c = _adapter(tmp_path / "c", 3, 2, 4, ["q_proj"])
    (tmp_path / "models" / "llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _set_base(a, "some/model")
    _set_base(b, "some/other-model")
    with pytest.raises(
        InputError,
        match="^--adapters: adapters of different base models: some/model, some/other-model$",
    ):
        merge_adapters([c, a, b], [0.4, 0.3, 0.3], tmp_path / "m")
    _set_base(a, "models/llama")
    _set_base(b, str(tmp_path / "models" / "llama"))
    _set_base(c, None)
    config = merge_adapters([c, a, b], [0.4, 0.3, 0.3], tmp_path / "m")
    assert config["base_model_name_or_path"] == "models/llama"


def test_missing_adapter_names_the_file(tmp_path):
    with pytest.raises(InputError, match="adapter_config.json not found"):
        merge_adapters([tmp_path / "nope", tmp_path / "nope2"], [0.5, 0.5], tmp_path / "m")


def test_merge_command(tmp_path, capsys):
    from midalign.cli import main

    a = _adapter(tmp_path / "a", 1, 2, 4, ["q_proj"])
    b = _adapter(tmp_path / "b", 2, 2, 4, ["v_proj"])
    out = tmp_path / "m"
    assert (
        main(
            [
                "merge",
                "--adapters",
                f"task={a}",
                f"align={b}",
                "--weights",
                "0.9,0.1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "merged 0.9·task + 0.1·align" in capsys.readouterr().out
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    shared = oct(0o666 & ~umask)  # 0o644 under the usual umask 022; safetensors alone makes 0600
    assert modes == dict.fromkeys(
        [
            ".midalign",
            "README.md",
            "adapter_config.json",
            "adapter_model.safetensors",
            "merge.json",
        ],
        shared,
    )
    assert f"0.9 × `{a}` + 0.1 × `{b}`" in (out / "README.md").read_text()  # the model card
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert (
        main(["merge", "--adapters", str(a), str(b), "--weights", "0.9,x", "--out", str(out)]) == 2
    )
    assert "--weights: expected numbers" in capsys.readouterr().err


def _tiny_gemma_adapter(model_dir, path, seed):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    return _adapter(path, seed, 2, 4, ["q_proj", "v_proj"], base=base, scale=0.5)


SEARCH_DATA = "sib200:" + str(
    __import__("pathlib").Path(__file__).parent / "fixtures" / "tasks" / "sib200"
)


def test_search_keeps_the_best_dev_weight(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Scores are faked (by weight) to check the choice; the merges and plumbing are real."""
    import midalign.evaluate
    from midalign.cli import main

    task = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "task", 1)
    align = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "align", 2)
    fake = iter([0.2, 0.6, 0.4])  # for 0.5, 0.7, 0.9: the candidates are scored in order

    def evaluate(model, tokenizer, task, examples, **kwargs):
        assert model.peft_config["default"].r == 4  # a merged adapter: rank 2 + 2
        return {"average": next(fake), "metric": "accuracy"}

    monkeypatch.setattr(midalign.evaluate, "evaluate", evaluate)
    out = tmp_path / "merged"
    args = ["merge", "--adapters", f"task={task}", f"align={align}", "--search", "0.9,0.5,0.7"]
    args += ["--model", str(tiny_model_dir), "--task", "topic", "--dev-data", SEARCH_DATA]
    args += ["--langs", "deu", "--split", "test", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    search = json.loads((out / "search.json").read_text())
    assert search["scores"] == {"0.5": 0.2, "0.7": 0.6, "0.9": 0.4}
    assert search["chosen"] == 0.7
    assert json.loads((out / "merge.json").read_text())["weights"] == pytest.approx([0.7, 0.3])
    direct = merge_adapters([task, align], [0.7, 0.3], tmp_path / "direct")
    assert direct["r"] == 4
    for name in ("adapter_model.safetensors",):
        from safetensors.torch import load_file

        ours, ref = load_file(out / name), load_file(tmp_path / "direct" / name)
        assert ours.keys() == ref.keys()
        assert all(torch.equal(ours[k], ref[k]) for k in ours)


def test_search_runs_real_evaluation_and_needs_its_options(tiny_model_dir, tmp_path, capsys):
    from midalign.cli import main

    task = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "task", 1)
    align = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "align", 2)
    base = ["merge", "--adapters", f"task={task}", f"align={align}"]
    out = tmp_path / "merged"
    assert main([*base, "--search", "0.5,0.9", "--out", str(out)]) == 2
    assert "--search needs --task" in capsys.readouterr().err
    assert main([*base, "--out", str(out)]) == 2
    assert "either --weights or --search" in capsys.readouterr().err
    assert not out.exists()
    args = [*base, "--search", "0.5,0.9", "--model", str(tiny_model_dir), "--task", "topic"]
    args += ["--dev-data", SEARCH_DATA, "--langs", "deu,jpn", "--split", "test"]
    args += ["--out", str(out), "--no-progress"]
    assert main(args) == 0
    search = json.loads((out / "search.json").read_text())
    assert set(search["scores"]) == {"0.5", "0.9"}
    assert all(0.0 <= s <= 1.0 for s in search["scores"].values())
    assert search["chosen"] == max((0.5, 0.9), key=lambda w: (search["scores"][f"{w:g}"], w))
