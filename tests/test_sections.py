"""One settings mechanism (midalign.sections) for train configs and recipes: values converted by
their annotation, unknown keys and bad values named by path, the same message from both readers,
and `midalign run --section.field` overrides that equal the same edit in the YAML."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from midalign import sections
from midalign.cli import main
from midalign.errors import InputError
from midalign.experiments.recipe import RunDtype, load_recipe
from midalign.training.config import NORMALIZE, load_config

REPO = Path(__file__).parents[1]


@dataclass(kw_only=True)
class Inner:
    size: int = sections.setting("a size", default=1)

    def check(self, name, error):
        if self.size < 1:
            raise error(f"{name('size')} must be positive, not {self.size}")


@dataclass(kw_only=True)
class Outer:
    name: str = sections.setting("required")
    mode: Literal["a", "b"] = sections.setting("a choice", default="a")
    pick: Literal["x", "y"] | None = sections.setting("an optional choice", default=None)
    rate: float = sections.setting("a float", default=0.5)
    flag: bool = sections.setting("a bool", default=False)
    seeds: list[int] = sections.setting("ints", default_factory=lambda: [0])
    langs: list[str] = sections.setting("strings", default_factory=list)
    groups: dict[str, list[str]] = sections.setting("a mapping", default_factory=dict)
    inner: Inner = sections.setting("a section", default_factory=Inner)
    items: list[Inner] = sections.setting("sections", default_factory=list)
    free: dict[str, Any] | None = sections.setting("read later", default=None)


def test_values_are_converted_by_their_annotation() -> None:
    o = sections.read(
        Outer,
        {
            "name": 7,  # YAML reads `name: 7` as an int
            "mode": "b",
            "pick": "none",
            "rate": "2",
            "flag": "yes",
            "seeds": "1, 2,3",
            "langs": ["deu", "fra"],
            "groups": {"t": "deu,fra"},
            "inner": {"size": "3"},
            "items": {"size": 2},  # one section where a list may stand
            "free": {"anything": [1]},
        },
        "f.yaml",
    )
    assert (o.name, o.mode, o.pick, o.rate, o.flag) == ("7", "b", None, 2.0, True)
    assert (o.seeds, o.langs, o.groups) == ([1, 2, 3], ["deu", "fra"], {"t": ["deu", "fra"]})
    assert o.inner == Inner(size=3) and o.items == [Inner(size=2)]
    assert o.free == {"anything": [1]}
    empty = sections.read(Outer, {"name": "n", "inner": None, "seeds": None}, "f.yaml")
    assert empty.inner == Inner() and empty.seeds == [0]  # left empty: the default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "f.yaml: name is required"),
        ({"name": "n", "colour": 1}, "f.yaml: unknown key colour (known: name, mode, pick, "),
        ({"name": "n", "inner": {"sise": 1}}, "f.yaml: unknown key inner.sise (known: size)"),
        ({"name": "n", "mode": "c"}, "f.yaml: mode must be one of a, b, not 'c'"),
        ({"name": "n", "pick": "z"}, "f.yaml: pick must be one of x, y, not 'z'"),
        ({"name": "n", "rate": "fast"}, "f.yaml: rate: expected float, got 'fast'"),
        ({"name": "n", "flag": "perhaps"}, "f.yaml: flag: expected bool, got 'perhaps'"),
        ({"name": "n", "seeds": [1, "two"]}, "f.yaml: seeds[1]: expected int, got 'two'"),
        ({"name": "n", "seeds": [1.5]}, "f.yaml: seeds[0]: expected int, got 1.5"),
        ({"name": "n", "inner": 3}, "f.yaml: inner: expected a mapping with keys size"),
        ({"name": "n", "items": [{}, {"size": "x"}]}, "f.yaml: items[1].size: expected int"),
        ({"name": "n", "free": "x"}, "f.yaml: free: expected a mapping, got 'x'"),
        ({"name": {"a": 1}}, "f.yaml: name: expected str, got {'a': 1}"),
    ],
)
def test_mistakes_are_named_by_path(values: dict, message: str) -> None:
    with pytest.raises(InputError) as e:
        sections.read(Outer, values, "f.yaml")
    assert str(e.value).startswith(message)


def test_check_runs_choices_and_own_rules_of_nested_sections() -> None:
    o = Outer(name="n", items=[Inner(), Inner(size=0)])
    with pytest.raises(InputError, match=r"^items\[1\].size must be positive, not 0$"):
        sections.check(o)
    o = Outer(name="n", mode="c")  # built in Python, not read: checked all the same
    with pytest.raises(ValueError, match="^--mode must be one of a, b, not 'c'$"):
        sections.check(o, name=lambda key: f"--{key}", error=ValueError)


def test_command_line_text_is_converted_and_named_by_its_option() -> None:
    o = Outer(name="n")
    sections.set_text(o, "seeds", "4,5", "--seeds")
    assert o.seeds == [4, 5]
    with pytest.raises(InputError, match="^--mode must be one of a, b, not 'q'$"):
        sections.set_text(o, "mode", "q", "--mode")
    with pytest.raises(InputError, match="^--rate: expected float, got 'x'$"):
        sections.set_text(o, "rate", "x", "--rate")


def test_choices_are_the_ones_the_code_uses() -> None:
    from midalign.modeling.dtypes import DTYPE_CHOICES
    from midalign.probe.retrieval import NORMALIZE_MODES

    assert typing.get_args(RunDtype) == DTYPE_CHOICES
    assert NORMALIZE == NORMALIZE_MODES


def _recipe_file(tmp_path: Path, **changes: Any) -> Path:
    recipe = yaml.safe_load((REPO / "recipes" / "cpu_normalize.yaml").read_text())
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = recipe
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[key] = value
    out = tmp_path / "r.yaml"
    out.write_text(yaml.safe_dump(recipe))
    return out


def test_a_config_and_a_recipe_say_the_same_thing_about_the_same_mistake(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("align: {normalize: whiten}\n")
    with pytest.raises(InputError) as train:
        load_config(config)
    with pytest.raises(InputError) as system:
        load_recipe(_recipe_file(tmp_path, systems__0__train={"align": {"normalize": "whiten"}}))
    with pytest.raises(InputError) as probe:
        load_recipe(_recipe_file(tmp_path, probe__normalize="whiten"))
    tail = "normalize must be one of none, center, standardize, not 'whiten'"
    assert str(train.value) == f"{config}: align.{tail}"
    assert str(system.value) == f"{tmp_path / 'r.yaml'}: system SFT: train.align.{tail}"
    assert str(probe.value) == f"{tmp_path / 'r.yaml'}: probe.{tail}"
    config.write_text("align: {temprature: 1}\n")
    with pytest.raises(InputError, match=r"c.yaml: unknown key align.temprature \(known: "):
        load_config(config)
    with pytest.raises(InputError, match=r"r.yaml: unknown key probe.temprature \(known: data, "):
        load_recipe(_recipe_file(tmp_path, probe__temprature=1))


def _steps(argv: list[str], capsys: pytest.CaptureFixture) -> list[str]:
    assert main(argv) == 0
    steps = (
        re.match(r"(?:done|to run) +(\S+)", line) for line in capsys.readouterr().out.splitlines()
    )
    return [m.group(1) for m in steps if m]


def test_an_override_is_the_same_edit_in_the_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`midalign run --probe.normalize standardize` plans the very steps (same hashes) of the
    recipe whose YAML says so; without the change the probe steps differ."""
    out = ["--out", str(tmp_path / "out"), "--dry-run", "--seeds", "1"]
    plain = _steps(["run", str(_recipe_file(tmp_path)), *out], capsys)
    edited = _steps(
        ["run", str(_recipe_file(tmp_path, probe__normalize="standardize")), *out], capsys
    )
    override = ["run", str(_recipe_file(tmp_path)), *out, "--probe.normalize", "standardize"]
    assert _steps(override, capsys) == edited
    changed = [a for a, b in zip(plain, edited, strict=True) if a != b]
    assert changed and all(name.startswith("probe-") for name in changed)
    assert main(["run", str(_recipe_file(tmp_path)), *out, "--eval.batch_size", "0"]) == 2
    assert "error: --eval.batch_size must be positive, not 0" in capsys.readouterr().err
