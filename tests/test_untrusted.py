"""Untrusted files: recipes and configs are plain data (no code runs), recipe names cannot move
a run out of its folder, adapters are read only as safetensors, and no loader in midalign
unpickles (checked on the source)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import yaml
from conftest import tiny_model
from peft import LoraConfig, get_peft_model

from midalign.cli import main
from midalign.errors import InputError
from midalign.experiments.recipe import load_recipe, parse_recipe
from midalign.experiments.runner import Runner, RunOptions, Steps
from midalign.modeling.loading import load_adapter
from midalign.training.config import load_config
from midalign.training.merge import read_adapter

PACKAGE = Path(__file__).resolve().parents[1] / "midalign"
CODE_TAGS = [
    "!!python/object/apply:os.system",
    "!!python/object/new:os.system",
    "!!python/name:os.system",
]


# --------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("tag", CODE_TAGS)
def test_yaml_with_a_python_tag_is_refused_not_run(tmp_path, capsys, tag):
    marker = tmp_path / "ran"
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: x\nmodel: {tag} ['touch {marker}']\n", encoding="utf-8")
    message = f"{path}:2: not valid YAML (could not determine a constructor for the tag"
    for load in (load_recipe, load_config):  # `midalign train --config` reads YAML the same way
        with pytest.raises(InputError) as e:
            load(path)
        assert str(e.value).startswith(message) and "python/" in str(e.value)
    assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"midalign run: error: {message}") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("name: x\nseeds: [1, 2]\nmodel: m\nseeds: [3]\n", 4, "seeds"),  # a recipe's second seeds
        ("model: {name: m}\nalign: {schedule: alternate}\nalign: {layers: '2'}\n", 3, "align"),
        ("align:\n  schedule: task\n  layers: '2'\n  schedule: alternate\n", 4, "schedule"),
    ],
)
def test_yaml_key_given_twice_is_refused_naming_its_line(tmp_path, text, line, key):
    """PyYAML keeps the last of two equal keys: a second align: would turn an aligned run into
    SFT without a word. Both readers refuse it, naming the file, the line and the key."""
    path = tmp_path / "twice.yaml"
    path.write_text(text, encoding="utf-8")
    for load in (load_recipe, load_config):
        with pytest.raises(InputError) as e:
            load(path)
        assert str(e.value) == f"{path}:{line}: not valid YAML (key {key!r} given twice)"


def test_yaml_merge_keys_still_override(tmp_path):
    from midalign.data.reading import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {r: 8, alpha: 16}\nlora:\n  <<: *b\n  r: 4\n", encoding="utf-8")
    assert read_yaml(path)["lora"] == {"r": 4, "alpha": 16}


# --------------------------------------------------------------------------- paths in recipes


def _recipe(name: str = "tiny", systems: list[str] = ("sft",)) -> dict:
    """A recipe whose data is never read (a dry run only names the steps)."""
    data = {"source": "sib200:/nonexistent", "langs": ["eng"]}
    return {
        "name": name,
        "model": "org/model",  # a hub id: a dry run checks a local model's path, not the hub
        "task": {"name": "topic", "train": data, "test": data},
        "systems": [
            {"name": "base", "zero_shot": True},
            *({"name": s, "train": {"align": {"schedule": "task"}}} for s in systems),
            {"name": f"{systems[0]}/merged", "merge": {"task": systems[0], "align": systems[-1]}},
        ],
    }


@pytest.mark.parametrize(
    "name", ["../../escape", "/tmp/abs", "..", ".", "a/b", "~/x", ".hidden", "x\\..\\y", ""]
)
def test_recipe_name_cannot_name_a_folder_outside_runs(name):
    with pytest.raises(InputError, match="must be a plain folder name"):
        parse_recipe(_recipe(name), "r.yaml" if name else "/x/...yaml")


def test_plain_recipe_names_are_kept():
    for name in ("demo", "cpu_topic", "ablation-2.1", "paper mt", "Deutsch+Français"):
        assert parse_recipe(_recipe(name), "r.yaml").name == name
    assert parse_recipe(_recipe(None), "recipes/cpu_mt.yaml").name == "cpu_mt"


def test_recipe_name_with_traversal_fails_in_the_cli(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe("../../escape")), encoding="utf-8")
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "name '../../escape' must be a plain folder name" in capsys.readouterr().err


EVIL = ["../../escape", "/abs/path", "..", "a/../../b", "..\\..\\c", "~root", "\x00x"]


def test_system_names_cannot_leave_the_steps_folder(tmp_path):
    out = tmp_path / "run"
    runner = Runner(parse_recipe(_recipe(systems=EVIL), "r.yaml"), RunOptions(out, dry_run=True))
    runner.run()
    steps = (out / "steps").resolve()
    # data, base eval, then train, merge and eval for every system
    assert len(runner.steps.ran) == 1 + 1 + 2 * len(EVIL) + 2
    for name in runner.steps.ran:
        assert "/" not in name and "\\" not in name and "\x00" not in name, name
        assert (out / "steps" / name).resolve().parent == steps, name
    assert not out.exists()  # a dry run writes nothing


def test_step_folder_is_one_component_under_steps(tmp_path):
    steps = Steps(tmp_path)
    for name in EVIL:
        folder = steps.folder(f"train-{name}-seed0", {"x": 1})
        assert folder.parent == tmp_path / "steps"
        assert folder.resolve().parent == (tmp_path / "steps").resolve()


# --------------------------------------------------------------------------- adapters


class _Touch:
    """A pickle that creates a file when it is loaded: what a hostile .bin could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_adapter_is_never_loaded(tmp_path):
    adapter = tmp_path / "adapter"
    model = get_peft_model(
        tiny_model("llama", n_layers=2), LoraConfig(r=2, target_modules=["q_proj"])
    )
    model.save_pretrained(adapter, safe_serialization=False)
    assert (adapter / "adapter_model.bin").is_file()
    marker = tmp_path / "ran"
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps({"weights": _Touch(marker)}))
    with pytest.raises(InputError, match="has no adapter_model.safetensors"):
        load_adapter(tiny_model("llama", n_layers=2), str(adapter))
    with pytest.raises(InputError, match="adapter_model.safetensors not found"):
        read_adapter(adapter)  # midalign merge
    assert not marker.exists()


# --------------------------------------------------------------------------- the source


def unsafe_loads(source: str) -> list[str]:
    """Places in Python source that can run code from a file: ``torch.load`` without
    ``weights_only=True``, pickle and friends, ``yaml.load`` & co, ``np.load`` with
    ``allow_pickle=True``, ``trust_remote_code=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            for module in modules:
                if (module or "").split(".")[0] in ("pickle", "dill", "cloudpickle", "shelve"):
                    found.append(f"{node.lineno}: import {module}")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}

        def given(key: str, value: object, kwargs: dict = kwargs) -> bool:
            return isinstance(kwargs.get(key), ast.Constant) and kwargs[key].value is value

        if func.split(".")[-2:] == ["torch", "load"] and not given("weights_only", True):
            found.append(f"{node.lineno}: {func} without weights_only=True")
        if func.startswith("yaml.") and func.split(".")[-1] in (
            "load",
            "load_all",
            "unsafe_load",
            "unsafe_load_all",
            "full_load",
            "full_load_all",
        ):
            found.append(f"{node.lineno}: {func}")
        if func in ("np.load", "numpy.load") and not given("allow_pickle", False):
            found.append(f"{node.lineno}: {func} without allow_pickle=False")
        if given("trust_remote_code", True):
            found.append(f"{node.lineno}: {func}(trust_remote_code=True)")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_the_source_check_finds_unsafe_loads():
    source = (
        "import torch, yaml, numpy as np\n"
        "torch.load(f)\n"
        "torch.load(f, weights_only=True)\n"
        "torch.load(f, weights_only=False)\n"
        "yaml.load(s, Loader=yaml.Loader)\n"
        "yaml.safe_load(s)\n"
        "import pickle\n"
        "np.load(f, allow_pickle=True)\n"
        "AutoModel.from_pretrained(x, trust_remote_code=True)\n"
    )
    assert [f.split(":")[0] for f in unsafe_loads(source)] == ["2", "4", "5", "7", "8", "9"]


def test_no_unsafe_load_in_midalign():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [f"{p.relative_to(PACKAGE)}:{x}" for p in files for x in unsafe_loads(p.read_text())]
    assert found == []
