from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import assert_same_numbers, tiny_model
from peft import LoraConfig, PeftModel, get_peft_model

from midalign.cli import main
from midalign.errors import InputError
from midalign.training.merge import merge_adapters


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
    """The rule `--adapter` applies too (midalign.modeling.loading.same_base): one folder spelled
    two ways is one base; an adapter that names none fits any."""
    a = _adapter(tmp_path / "a", 1, 2, 4, ["q_proj"])
    b = _adapter(tmp_path / "b", 2, 2, 4, ["q_proj"])
    c = _adapter(tmp_path / "c", 3, 2, 4, ["q_proj"])
    (tmp_path / "models" / "llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _set_base(a, "some/model")
    _set_base(b, "some/other-model")
    with pytest.raises(
        InputError,
        match="^merge_adapters: adapters of different base models: some/model, some/other-model$",
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


def _deltas(model, name: str) -> dict[str, torch.Tensor]:
    """ΔW of adapter ``name`` on every LoRA layer of a PEFT model that has it."""
    from peft.tuners.lora import LoraLayer

    return {
        key: layer.get_delta_weight(name)
        for key, layer in model.named_modules()
        if isinstance(layer, LoraLayer) and name in layer.lora_A
    }


def _two_adapters(tmp_path, rslora_first: bool):
    """A tiny Llama with adapters "task" (r 4) and "align" (r 2, rsLoRA) on it, from folders."""
    targets = ["q_proj", "v_proj", "down_proj"]
    task = _adapter(tmp_path / "task", 1, r=4, alpha=8, targets=targets, rslora=rslora_first)
    align = _adapter(tmp_path / "align", 2, 2, 16, ["q_proj", "o_proj"], rslora=True)
    model = PeftModel.from_pretrained(tiny_model("llama", n_layers=2), task, adapter_name="task")
    model.load_adapter(align, adapter_name="align")
    return model, task, align


def test_in_memory_merge_equals_peft_cat_merge(tmp_path):
    """Adapters on a PEFT model merge as PEFT's add_weighted_adapter(combination_type="cat"):
    the same ΔW on every module, added to the model, not activated; and written to a folder
    they give the folder merge's very tensors."""
    model, task, align = _two_adapters(tmp_path, rslora_first=False)
    config = merge_adapters([(model, "task"), (model, "align")], [0.7, 0.3])
    model.add_weighted_adapter(["task", "align"], [0.7, 0.3], "cat", combination_type="cat")
    assert config["r"] == model.peft_config["merged"].r == model.peft_config["cat"].r == 6
    assert model.active_adapter == "task"
    ours, peft_cat = _deltas(model, "merged"), _deltas(model, "cat")
    task_d, align_d = _deltas(model, "task"), _deltas(model, "align")
    assert set(ours) == set(peft_cat) and len(ours) == 2 * 4  # 4 target kinds × 2 layers
    for key, d in ours.items():
        torch.testing.assert_close(d, peft_cat[key], atol=1e-6, rtol=0)
        expected = 0.7 * task_d.get(key, 0) + 0.3 * align_d.get(key, 0)
        torch.testing.assert_close(d, expected, atol=1e-6, rtol=0)

    from safetensors.torch import load_file

    merge_adapters([model, (model, "align")], [0.7, 0.3], tmp_path / "mem")  # model: "task"
    merge_adapters([task, align], [0.7, 0.3], tmp_path / "dir")
    mem, folder = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("mem", "dir"))
    assert mem.keys() == folder.keys() and all(torch.equal(mem[k], folder[k]) for k in mem)
    merged = json.loads((tmp_path / "mem" / "merge.json").read_text())
    assert merged["adapters"] == ["task (in memory)", "align (in memory)"]


def test_in_memory_merge_is_exact_where_peft_cat_is_not(tmp_path):
    """PEFT's cat keeps the first adapter's use_rslora for the merged adapter, whose α = r then
    scales by √r instead of 1: with an rsLoRA adapter first its ΔW is √6 times too large. Ours
    stays Σ wᵢ ΔWᵢ."""
    model, _, _ = _two_adapters(tmp_path, rslora_first=True)
    merge_adapters([(model, "task"), (model, "align")], [0.7, 0.3])
    model.add_weighted_adapter(["task", "align"], [0.7, 0.3], "cat", combination_type="cat")
    task_d, align_d, peft_cat = (_deltas(model, n) for n in ("task", "align", "cat"))
    for key, d in _deltas(model, "merged").items():
        expected = 0.7 * task_d.get(key, 0) + 0.3 * align_d.get(key, 0)
        torch.testing.assert_close(d, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(peft_cat[key], 6**0.5 * expected, atol=1e-5, rtol=1e-5)


def test_in_memory_merge_refuses_what_it_cannot_place(tmp_path):
    model, task, _ = _two_adapters(tmp_path, rslora_first=False)
    other = PeftModel.from_pretrained(tiny_model("llama", n_layers=2), task)
    cases = [
        ([task, task], "without out \\(a folder\\), the adapters must be on one PEFT model"),
        ([(model, "task"), other], "must be on one PEFT model, which the merge is added to \\(2"),
        ([(model, "task"), (model, "nope")], "has no adapter 'nope' \\(it has task, align\\)"),
        ([(model, "task"), tiny_model("llama")], "LlamaForCausalLM is neither an adapter folder"),
    ]
    for adapters, message in cases:
        with pytest.raises(InputError, match="^merge_adapters: .*" + message):
            merge_adapters(adapters, [0.5, 0.5])
    merge_adapters([(model, "task"), (model, "align")], [0.5, 0.5], adapter_name="mix")
    with pytest.raises(InputError, match="^merge_adapters: the PEFT model already has .* 'mix'$"):
        merge_adapters([(model, "task"), (model, "align")], [0.5, 0.5], adapter_name="mix")


def test_api_page_in_memory_example(tmp_path, monkeypatch):
    """The block of docs/api.md (the "Python API" page) that merges on a PEFT model, run on a
    tiny Llama."""
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "merge_" in b]
    monkeypatch.chdir(tmp_path)
    task = _adapter(Path("runs/task"), 1, 4, 8, ["q_proj", "v_proj"])
    align = _adapter(Path("runs/align"), 2, 2, 4, ["q_proj"])
    namespace = {"base": tiny_model("llama", n_layers=2)}
    exec(example, namespace)
    model = namespace["model"]
    assert model.active_adapter == "merged"
    d_task, d_align = _delta(task), _delta(align)
    base = tiny_model("llama", n_layers=2).state_dict()
    merged = {k: v - base[k] for k, v in model.merge_and_unload().state_dict().items()}
    for key, d in merged.items():
        torch.testing.assert_close(d, 0.9 * d_task[key] + 0.1 * d_align[key], atol=1e-6, rtol=0)


def test_merge_command(tmp_path, capsys):

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
    import midalign.evaluation.run

    task = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "task", 1)
    align = _tiny_gemma_adapter(tiny_model_dir, tmp_path / "align", 2)
    fake = iter([0.2, 0.6, 0.4])  # for 0.5, 0.7, 0.9: the candidates are scored in order

    def evaluate(model, tokenizer, task, examples, **kwargs):
        assert model.peft_config["default"].r == 4  # a merged adapter: rank 2 + 2
        return {"average": next(fake), "metric": "accuracy"}

    monkeypatch.setattr(midalign.evaluation.run, "evaluate", evaluate)
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


def test_errors_name_the_arguments_from_python_and_the_options_from_the_cli(tmp_path, capsys):
    """The same faults, from the Python API and from `midalign merge`: each names what its
    caller wrote (merge_adapters' arguments, the command's options)."""
    a = _adapter(tmp_path / "a", 1, 2, 4, ["q_proj"])
    missing = tmp_path / "missing"
    api = [
        ([a, a], [0.5, 0.4], "^merge_adapters: weights must sum to 1, got \\[0.5, 0.4\\]"),
        ([a], [0.5, 0.5], "^merge_adapters: weights: 2 weights for 1 adapters$"),
        ([a, missing], [0.5, 0.5], f"^merge_adapters: {missing}/adapter_config.json not found"),
    ]
    for adapters, weights, message in api:
        with pytest.raises(InputError, match=message):
            merge_adapters(adapters, weights, tmp_path / "out")
    cli = [
        (["--weights", "0.5,0.4"], "--weights must sum to 1, got [0.5, 0.4]"),
        (["--weights", "0.5,0.5"], f"--adapters: {missing}/adapter_config.json not found"),
    ]
    for options, message in cli:
        argv = ["merge", "--adapters", str(a), str(missing), *options, "--out", str(tmp_path / "o")]
        assert main(argv) == 2
        assert f"midalign merge: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()
