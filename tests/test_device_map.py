"""Models bigger than one device (`--device-map`, `--max-memory`): accelerate's big-model loading,
compared with the whole model on one device.

A CPU-only machine has one device, so every split here is between modules kept in RAM ("cpu")
and modules offloaded to "disk" (their weights on meta between forwards, read in from the
safetensors file by accelerate's hook for each forward). The hooks' other job, carrying the
hidden states from one accelerator to the next, cannot run here: on CPU every module, offloaded
or not, executes on the CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import ROUTE_DTYPES, assert_same_numbers, precision, rel_error, tiny_model
from conftest import tiny_tokenizer as make_tokenizer
from safetensors.torch import load_file
from test_probe_cli import _files as _parallel_files

from midalign.cli import main
from midalign.errors import InputError
from midalign.modeling import generate as gen
from midalign.modeling.forward import pooled_states
from midalign.modeling.layers import decoder_layers
from midalign.modeling.loading import load_model, peft_quietly
from midalign.modeling.placement import Placement, unplaced
from midalign.modeling.prompting import encode_prompt
from midalign.probe.embeddings import extract_embeddings

SPECIAL = (0, 1, 2)  # pad, bos, eos of the tiny models
# Every second module on disk, the embeddings too: the first parameter is then on meta, so
# neither `model.device` nor `next(model.parameters()).device` says where input ids go.
SPLIT = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "disk",
    "lm_head": "disk",  # tied to the embeddings in Gemma 3
}
# accelerate's own split (infer_auto_device_map) of the tiny 4-layer models (about 180 kB in
# float32) within 150 kB of RAM: embeddings and layers 0-1 in RAM, layers 2-3 and the norm on disk
AUTO = Placement("auto", {"cpu": 150_000})
PLACEMENTS = pytest.mark.parametrize("placement", [Placement(SPLIT), AUTO], ids=["map", "auto"])


def _save(tmp_path: Path, family: str) -> str:
    path = tmp_path / f"tiny-{family}"
    tiny_model(family, n_layers=4).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """BOS + random content tokens, right-padded: [3, 8]."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(3, 8, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate((7, 4, 1)):
        ids[row, : n + 1] = torch.cat([torch.tensor([1]), torch.randint(3, 128, (n,), generator=g)])
        mask[row, : n + 1] = 1
    return ids, mask


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _assert_split(model: torch.nn.Module) -> None:
    """Placed by accelerate, with modules both in RAM and offloaded to disk."""
    assert {"cpu", "disk"} <= set(model.hf_device_map.values()), model.hf_device_map
    assert any(p.is_meta for p in model.parameters())


@ROUTE_DTYPES
@PLACEMENTS
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_pooled_states_of_a_split_model_equal_one_device(tmp_path, family, placement, dtype):
    path = _save(tmp_path, family)
    whole, tokenizer = load_model(path, dtype=_dtype_name(dtype), device="cpu")
    split, _ = load_model(path, dtype=_dtype_name(dtype), placement=placement)
    _assert_split(split)
    ids, mask = _batch()
    for layers in ([0, 1, 2, 3, 4], [1, 3], [2], [4]):
        for final_norm in (True, False):
            with torch.inference_mode():
                want = pooled_states(whole, ids, mask, layers, "mean", SPECIAL, final_norm)
                got = pooled_states(split, ids, mask, layers, "mean", SPECIAL, final_norm)
            assert got.device == ids.device and got.dtype == dtype
            for g, w in zip(got, want, strict=True):
                assert_same_numbers(g, w, precision(family, dtype))
    # the probe's route: tokenised, batched by token budget, moved to the embeddings' device
    sentences = [line for lines in SENTENCES.values() for line in lines]
    kwargs = {"batch_tokens": 16, "progress": False}
    want = extract_embeddings(whole, tokenizer, sentences, [0, 2, 4], **kwargs)
    got = extract_embeddings(split, tokenizer, sentences, [0, 2, 4], **kwargs)
    for g, w in zip(got, want, strict=True):
        assert_same_numbers(g, w, torch.float32)  # the probe keeps float32 embeddings


def test_the_early_exit_of_a_split_model_runs_no_later_layer(tmp_path):
    split, _ = load_model(_save(tmp_path, "llama"), placement=Placement(SPLIT))
    ran = []
    modules = [(f"layer{i}", m) for i, m in enumerate(decoder_layers(split))]
    for name, module in [*modules, ("norm", split.model.norm), ("head", split.lm_head)]:
        module.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    ids, mask = _batch()
    with torch.inference_mode():
        pooled_states(split, ids, mask, [1, 2], "mean", SPECIAL)
        assert ran == ["layer0", "layer1"]  # layer index 2 is the output of the second layer
        ran.clear()
        pooled_states(split, ids, mask, [4], "mean", SPECIAL)
        assert ran == ["layer0", "layer1", "layer2", "layer3", "norm"]  # no head, no logits


def _adapter(model_dir: str, path: Path) -> Path:
    """A LoRA adapter on attention and MLP that changes the model (B is 0 at init)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"])
    with peft_quietly():
        peft = get_peft_model(base, config)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft.save_pretrained(path)
    return path


def _files(folder: str) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).iterdir())
        if p.is_file()
    }


@ROUTE_DTYPES
def test_an_adapter_on_a_split_model_equals_one_device(tmp_path, dtype):
    """PEFT's own route for an offloaded model re-dispatches it and rewrites the safetensors
    files its offloaded weights are read from; transformers' `load_adapter` leaves the LoRA
    weights of offloaded layers on meta, and they compute NaN. Ours does neither."""
    path = _save(tmp_path, "llama")
    adapter = str(_adapter(path, tmp_path / "adapter"))
    files = _files(path)
    base, _ = load_model(path, dtype=_dtype_name(dtype), device="cpu")
    whole, _ = load_model(path, adapter, _dtype_name(dtype), device="cpu")
    split, _ = load_model(path, adapter, _dtype_name(dtype), placement=Placement(SPLIT))
    _assert_split(split.get_base_model())
    assert not any(p.is_meta for name, p in split.named_parameters() if "lora_" in name)
    ids, mask = _batch()
    with torch.inference_mode():
        want = pooled_states(whole, ids, mask, [1, 2, 3, 4], "mean", SPECIAL)
        got = pooled_states(split, ids, mask, [1, 2, 3, 4], "mean", SPECIAL)
        plain = pooled_states(base, ids, mask, [1, 2, 3, 4], "mean", SPECIAL)
    for g, w, p in zip(got, want, plain, strict=True):
        assert_same_numbers(g, w, dtype)
        assert rel_error(p, w) > 1e-2  # the adapter is applied, on every layer
    assert _files(path) == files  # the model folder is read, never written


@PLACEMENTS
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_generation_of_a_split_model_equals_one_device(tmp_path, family, placement):
    """Greedy answers, compared token for token: in float64, so that no argmax is a near-tie
    that rounding could break (Gemma 3 computes its norms in float32 whatever the dtype, but
    with the same kernels on both routes)."""
    path = _save(tmp_path, family)
    whole, tokenizer = load_model(path, dtype="float64", device="cpu")
    split, _ = load_model(path, dtype="float64", placement=placement)
    _assert_split(split)
    texts = ["the law is equal", "a", "everyone is born free and equal in dignity and rights"]
    prompts = [encode_prompt(tokenizer, text, system="people") for text in texts]
    kwargs = {"max_new_tokens": 8, "batch_size": 2, "progress": False}
    answers = gen.generate(whole, tokenizer, prompts, **kwargs)
    assert any(answers)  # the random model does say something
    assert gen.generate(split, tokenizer, prompts, **kwargs) == answers


# --------------------------------------------------------------------------- the commands

SENTENCES = {
    "eng_Latn": ["all human beings are born free", "everyone is equal", "the law", "a right"],
    "deu_Latn": ["der mensch ist frei", "ein recht", "die person", "das und die"],
    "fra_Latn": ["le droit", "la loi est la loi", "les gens", "une personne"],
}
FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def _data(tmp_path: Path) -> str:
    return _parallel_files(tmp_path, SENTENCES)


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's own errors
        return e.code


def _recording(monkeypatch, module: str) -> list:
    """Keep the models ``module``'s load_model returns, to look at their placement."""
    loaded = []

    def load(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        loaded.append(model)
        return model, tokenizer

    monkeypatch.setattr(f"{module}.load_model", load)
    return loaded


def _without_placement(results: dict) -> dict:
    """results.json as a plain run writes it: the placement options and the time taken are
    the only differences allowed."""
    config = results["config"]
    return {
        **{k: v for k, v in results.items() if k != "seconds"},
        "config": {k: v for k, v in config.items() if k not in ("device_map", "max_memory")},
    }


def test_probe_with_device_map_auto_writes_the_plain_runs_results(
    tiny_model_dir, tmp_path, monkeypatch
):
    data = _data(tmp_path)
    argv = ["probe", "--model", str(tiny_model_dir), "--data", data, "--langs", "en,de,fr"]
    argv += ["--k", "2", "--save-embeddings", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    loaded = _recording(monkeypatch, "midalign.probe.run")
    split = ["--device-map", "auto", "--max-memory", "cpu=150kB"]
    assert main([*argv, *split, "--out", str(tmp_path / "split")]) == 0
    _assert_split(loaded[0])

    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    results = json.loads((tmp_path / "split" / "results.json").read_text())
    assert results["config"]["device_map"] == "auto"
    assert results["config"]["max_memory"] == "cpu=150kB"
    # The same kernels on the same inputs, only the weights are stored elsewhere: the states
    # agree far inside float32's bound, and no retrieval is close enough to a tie to flip.
    assert _without_placement(results) == _without_placement(plain)
    index = json.loads((tmp_path / "plain" / "embeddings" / "index.json").read_text())
    for side in index["sides"].values():
        want = load_file(tmp_path / "plain" / "embeddings" / side["file"])
        got = load_file(tmp_path / "split" / "embeddings" / side["file"])
        assert sorted(got) == sorted(want)
        for key, tensor in want.items():
            assert_same_numbers(got[key], tensor, torch.float32)


def test_eval_with_a_device_map_file_writes_the_plain_runs_answers(
    tiny_model_dir, tmp_path, monkeypatch
):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(SPLIT))
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "topic", "--langs", "de,ja"]
    argv += ["--data", f"sib200:{FIXTURES / 'sib200'}", "--max-new-tokens", "6", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    loaded = _recording(monkeypatch, "midalign.cli.eval")
    offload = tmp_path / "offload"
    split = ["--device-map", str(mapping), "--offload-folder", str(offload)]
    assert main([*argv, *split, "--out", str(tmp_path / "split")]) == 0
    _assert_split(loaded[0])
    assert loaded[0].hf_device_map == SPLIT
    # safetensors weights are read in place: nothing had to be re-saved for disk
    assert list(offload.iterdir()) == []

    def read(name: str) -> str:
        return (tmp_path / name / "predictions.jsonl").read_text(encoding="utf-8")

    assert read("split") == read("plain")
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    results = json.loads((tmp_path / "split" / "results.json").read_text())
    assert results["config"]["device_map"] == str(mapping)
    assert _without_placement(results) == _without_placement(plain)


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--max-memory", "cpu=1GB"], "--max-memory: needs --device-map (e.g. --device-map auto)"),
        (
            ["--offload-folder", "off"],
            "--offload-folder: needs --device-map (e.g. --device-map auto)",
        ),
        (
            ["--device-map", "auto", "--max-memory", "cpu"],
            "--max-memory: expected DEVICE=SIZE pairs such as 0=20GiB,cpu=60GiB; got 'cpu'",
        ),
        (
            ["--device-map", "auto", "--max-memory", "cpu=lots"],
            "--max-memory: cpu=lots: not a size (bytes, or a number with a unit such as 500MB, "
            "20GiB)",
        ),
        (
            ["--device-map", "auto", "--max-memory", "gpu=1GB"],
            "--max-memory: unknown device 'gpu' (accelerator indices 0, 1, …, or cpu, disk, mps)",
        ),
        (
            ["--device-map", "auto", "--max-memory", "cpu=1GB,cpu=2GB"],
            "--max-memory: device cpu is given twice",
        ),
        (
            ["--device-map", "auto", "--max-memory", "999=1GB"],
            "--max-memory: device 999 is not available (this machine has ",
        ),
        (
            ["--device-map", "everywhere"],
            "--device-map: expected auto, balanced, balanced_low_0, sequential or a JSON file "
            "mapping module names to devices; 'everywhere' is neither",
        ),
        (
            ["--device-map", "MAP:[1, 2]"],
            "--device-map: MAP: expected an object {module name: device}",
        ),
        (
            ["--device-map", 'MAP:{"model.layers.0": 1.5}'],
            "--device-map: MAP: device of 'model.layers.0' must be an accelerator index, "
            '"cpu" or "disk", not 1.5',
        ),
        (
            ["--device-map", 'MAP:{"model.layers.0": "gpu"}'],
            "--device-map: MAP: model.layers.0: unknown device 'gpu' (cpu, disk, an accelerator "
            "index or a name such as cuda:1)",
        ),
        (
            ["--device-map", 'MAP:{"": "disk"}', "--max-memory", "cpu=1GB"],
            "--max-memory: only with a --device-map strategy (auto, balanced, balanced_low_0, "
            "sequential), not with a map file",
        ),
    ],
)
def test_bad_placement_options_fail_in_one_line_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys, options, message
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    if options[1].startswith("MAP:"):
        (tmp_path / "map.json").write_text(options[1].removeprefix("MAP:"))
        options = [options[0], "map.json", *options[2:]]
        message = message.replace("MAP", "map.json")
    argv = ["probe", "--model", str(tiny_model_dir), "--data", _data(tmp_path), "--langs", "en,de"]
    assert _run([*argv, *options, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"midalign probe: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("notes.txt", "--offload-folder: notes.txt is a file; give a folder (made if missing)"),
        (
            "notes.txt/off",
            "--offload-folder: cannot use notes.txt/off: {tmp}/notes.txt is a file, not a folder",
        ),
    ],
)
def test_an_offload_folder_that_is_a_file_is_named_before_the_model_loads(
    tiny_model_dir, tmp_path, monkeypatch, capsys, folder, message
):
    """Not "--model: cannot load …: [Errno 17] File exists", transformers' error when making
    the folder while loading."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("midalign.probe.run.load_model", _never)
    (tmp_path / "notes.txt").write_text("mine\n")
    argv = ["probe", "--model", str(tiny_model_dir), "--data", _data(tmp_path), "--langs", "en,de"]
    argv += ["--device-map", "auto", "--offload-folder", folder]
    assert _run([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"midalign probe: error: {message.format(tmp=tmp_path)}\n"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert not (tmp_path / "out").exists()


def test_an_offload_folder_that_cannot_be_made_is_named_not_the_model(tiny_model_dir) -> None:
    """A folder in /proc passes the up-front check for root, whom ``os.access`` lets write
    anywhere; making it at load fails, and the error names --offload-folder."""
    off = "/proc/midalign-test/off"
    with pytest.raises(InputError) as e:
        load_model(str(tiny_model_dir), placement=Placement("auto", None, off))
    assert str(e.value) == f"--offload-folder: cannot create {off} (No such file or directory)"


def test_the_modules_a_map_leaves_out_are_the_topmost_ones() -> None:
    weights = [
        "model.embed_tokens.weight",
        "model.layers.0.q.weight",
        "model.layers.0.k.weight",
        "model.layers.1.q.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert unplaced(weights, {"model.layers.0.q": 0}) == [
        "model.embed_tokens",
        "model.layers.0.k",
        "model.layers.1",
        "model.norm",
        "lm_head",
    ]
    assert unplaced(weights, {"model": "cpu"}) == ["lm_head"]  # a tied head is a weight too
    assert unplaced(weights, {"model.layers.1": "disk", "": "cpu"}) == []  # "": the rest


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            {**SPLIT, "model.layer.3": "disk"},
            "--device-map: this model has no module 'model.layer.3' (names as "
            "model.named_modules() gives them, e.g. model.layers.0)\n",
        ),
        (
            {"model.layers.0": "disk"},
            "--device-map: the map leaves out model.embed_tokens, model.layers.1, "
            "model.layers.2, model.layers.3, model.norm, lm_head; every module with weights "
            "needs a device (an entry places its submodules too)\n",
        ),
        (  # one device: transformers loads it, the modules left out on the CPU outside the map
            {"model.layers.0": "cpu", "model.layers.2.mlp": "cpu"},
            "--device-map: the map leaves out model.embed_tokens, model.layers.1, "
            "model.layers.2.self_attn, model.layers.2.input_layernorm, "
            "model.layers.2.post_attention_layernorm, model.layers.2.pre_feedforward_layernorm, "
            "model.layers.2.post_feedforward_layernorm, model.layers.3 and 2 more; every "
            "module with weights needs a device (an entry places its submodules too)\n",
        ),
    ],
    ids=["unknown module", "incomplete", "incomplete on one device"],
)
def test_a_map_that_does_not_fit_the_model_is_one_line(
    tiny_model_dir, tmp_path, capsys, mapping, message
):
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "topic", "--langs", "de"]
    argv += ["--data", f"sib200:{FIXTURES / 'sib200'}", "--device-map", str(tmp_path / "map.json")]
    assert _run([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    expected = f"midalign eval: error: {message.format(model=tiny_model_dir)}"
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
