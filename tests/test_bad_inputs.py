"""Every CLI command × every class of bad input: one line naming the file (and line) or the
option, exit code 2, and nothing left behind.

Each case builds its files in a fresh folder, runs ``midalign <command>`` in-process, and checks:
- the exit code is 2 and stderr ends in exactly one ``midalign <command>: error: …`` line that
  contains every expected fragment (a file name, ``:line``, or an option);
- the output does not exist afterwards (or, where it existed before, is unchanged), and no
  temporary sibling (``.name.tmp-*``) is left in its folder.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tiny_model, tiny_tokenizer

from midalign.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
EN = ["the people are free", "all is equal", "a person has rights", "the law", "born free"]
DE = ["die leute sind frei", "alles ist gleich", "eine person hat rechte", "das recht", "frei"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny-gemma3"
    tiny_model("gemma3", n_layers=4).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def lines(path: Path, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(r + "\n" for r in rows).encode(encoding))
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    return lines(path, [json.dumps(r, ensure_ascii=False) for r in rows])


def massive_row(i: int, annot: str, locale: str = "en-US") -> dict:
    utt = annot.replace("[", "").replace("]", "")
    return {"id": str(i), "locale": locale, "partition": "test", "utt": utt, "annot_utt": annot}


def iob2(path: Path, rows: list[str]) -> Path:
    return lines(path, ["# sent_id = s1", "# text = Ole bor i Oslo", *rows, ""])


def adapter(path: Path, base: str = "base-a", r: int = 2) -> Path:
    """A minimal PEFT LoRA adapter folder over one 4×4 projection."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": ["q_proj"],
        "task_type": "CAUSAL_LM",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {f"{prefix}.lora_A.weight": torch.ones(r, 4), f"{prefix}.lora_B.weight": torch.ones(4, r)},
        path / "adapter_model.safetensors",
    )
    return path


@dataclass
class Case:
    id: str
    build: Callable[[Path, Path], list[str]]  # (folder, model dir) -> argv; makes the files
    expect: tuple[str, ...]  # fragments of the one error line
    out: str = "out"  # what must not exist afterwards (relative to the folder)
    existing_out: bool = False  # the output existed before and must be unchanged


def probe_argv(d: Path, model: Path, data: str, *extra: str) -> list[str]:
    langs = [] if "--langs" in extra else ["--langs", "en,de"]
    out = ["--out", str(d / "out"), "--no-progress"]
    return ["probe", "--model", str(model), "--data", data, *langs, *out, *extra]


def eval_argv(d: Path, model: Path, task: str, data: str, langs: str) -> list[str]:
    out = ["--out", str(d / "out"), "--no-progress"]
    return ["eval", "--model", str(model), "--task", task, "--data", data, "--langs", langs, *out]


def prepare_argv(d: Path, task: str, data: str, langs: str, *extra: str) -> list[str]:
    out = ["--out", str(d / "out")]
    return ["data", "prepare", "--task", task, "--source", data, "--langs", langs, *out, *extra]


def plain(d: Path, en: list[str] = EN, de: list[str] = DE, encoding: str = "utf-8") -> str:
    lines(d / "t.en", en, encoding)
    lines(d / "t.de", de)
    return f"parallel:{d / 't.en'},{d / 't.de'}"


def massive(d: Path, rows: list[str], encoding: str = "utf-8") -> str:
    (d / "massive").mkdir(exist_ok=True)
    lines(d / "massive" / "en-US.jsonl", rows, encoding)
    return f"massive:{d / 'massive'}"


GOOD_MASSIVE = [
    json.dumps(massive_row(1, "play [music_genre : jazz]")),
    json.dumps(massive_row(2, "wake me up at [time : five am]")),
]
FLORES = f"flores:{FIXTURES / 'data' / 'flores'}"
ALMA = f"alma:{FIXTURES / 'tasks' / 'alma'}"


def uner(d: Path, rows: list[str]) -> str:
    iob2(d / "da_ddt-ud-test.iob2", rows)
    return f"uner:{d}"


def train_argv(d: Path, model: Path, *extra: str, task: list[str] | None = None) -> list[str]:
    """A valid one-step `midalign train` on the tiny model, changed by ``extra`` options (no
    warm-up: its one step would have learning rate 0)."""
    rows = (
        task
        if task is not None
        else [
            json.dumps({"prompt": "all is equal", "response": "the people"}),
            json.dumps({"prompt": "a person has", "response": "rights"}),
        ]
    )
    task_file = lines(d / "task.jsonl", rows)
    (d / "tatoeba").mkdir(exist_ok=True)
    lines(d / "tatoeba" / "tatoeba.deu-eng.deu", DE)
    lines(d / "tatoeba" / "tatoeba.deu-eng.eng", EN)
    return [
        "train", "--model", str(model), "--data.task_data", str(task_file),
        "--data.align_data", f"tatoeba:{d / 'tatoeba'}", "--data.align_langs", "deu",
        "--data.align_dev_pairs", "0", "--optim.max_steps", "1", "--align-batch-pairs", "2",
        "--optim.warmup_ratio", "0", "--out", str(d / "out"), "--no-progress", *extra,
    ]  # fmt: skip


def resumed(d: Path, *options: str) -> list[str]:
    """`train --resume` of a run folder holding a valid config.yaml, with ``options``."""
    from midalign.training.config import TrainConfig

    config = TrainConfig()
    config.data.task_data, config.data.align_data = str(d / "task.jsonl"), f"tatoeba:{d}"
    config.data.align_langs = ["deu"]
    existing(d, [])
    (d / "out" / "config.yaml").write_text(config.to_yaml())
    return ["train", "--out", str(d / "out"), "--resume", "--no-progress", *options]


def unfinished(d: Path, argv: list[str]) -> list[str]:
    """``argv`` into a run folder of midalign's whose run stopped after checkpoint-2 (no
    train_result.json: killed)."""
    from midalign.files import mark_output_dir
    from midalign.training.checkpoints import COMPLETE_FILE

    existing(d, argv)
    mark_output_dir(d / "out")
    (d / "out" / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (d / "out" / "checkpoints" / "checkpoint-2" / COMPLETE_FILE).write_text("2\n")
    return argv


def merge_argv(d: Path, weights: str = "0.5,0.5", base_b: str = "base-a") -> list[str]:
    a = d / "a" if (d / "a").exists() else adapter(d / "a")
    b = adapter(d / "b", base_b)
    out = ["--out", str(d / "out")]
    return ["merge", "--adapters", f"task={a}", f"align={b}", "--weights", weights, *out]


def recipe_argv(d: Path, text: str) -> list[str]:
    (d / "recipe.yaml").write_text(text)
    return ["run", str(d / "recipe.yaml"), "--out", str(d / "out"), "--dry-run"]


def recipe_with(
    d: Path, task: str = "topic", langs: str = "eng", temperature: float = 0.1
) -> list[str]:
    """A recipe that passes `run --dry-run` (whose data is never read), changed in one place."""
    data = f"{{source: sib200:{d}, langs: [{langs}]}}"
    return recipe_argv(
        d,
        (
            f"name: x\ntask: {{name: {task}, train: {data}, test: {data}}}\n"
            "train: {data: {align_data: udhr, align_langs: [deu]}}\n"
            f"systems:\n  - {{name: aligned, train: {{align: {{temperature: {temperature}}}}}}}\n"
        ),
    )


def recipe_model(d: Path, model: str) -> list[str]:
    """:func:`recipe_with`'s recipe with ``model: MODEL``."""
    argv = recipe_with(d)
    text = (d / "recipe.yaml").read_text()
    (d / "recipe.yaml").write_text(f"model: {model}\n{text}")
    return argv


def existing(d: Path, argv: list[str]) -> list[str]:
    (d / "out").mkdir(exist_ok=True)
    (d / "out" / "keep.txt").write_text("earlier results\n")
    return argv


def unwritable(d: Path, argv: list[str]) -> list[str]:
    """--out inside /proc, where no user (root included) can create anything."""
    return [a if a != str(d / "out") else "/proc/midalign-test/out" for a in argv]


def out_at(d: Path, name: str, argv: list[str]) -> list[str]:
    """``argv`` writing to ``d/name`` instead of ``d/out``."""
    return [a if a != str(d / "out") else str(d / name) for a in argv]


def a_file_as_out(d: Path, argv: list[str], text: str = "my notes\n") -> list[str]:
    """--out naming a file the user already has (``d/notes.txt``)."""
    (d / "notes.txt").write_text(text)
    return out_at(d, "notes.txt", argv)


def under_a_file(d: Path, argv: list[str]) -> list[str]:
    """--out inside a file the user already has (``d/notes.txt/out``)."""
    (d / "notes.txt").write_text("my notes\n")
    return out_at(d, "notes.txt/out", argv)


def recipe_folder(d: Path, m: Path) -> list[str]:
    """`midalign run` given the folder of two recipes instead of one of them."""
    (d / "recipes").mkdir()
    for name in ("b.yaml", "a.yaml"):
        lines(d / "recipes" / name, ["name: x"])
    return ["run", str(d / "recipes"), "--out", str(d / "out")]


def not_dry(argv: list[str]) -> list[str]:
    """``argv`` of `midalign run` without --dry-run (which writes nothing, so may look into a
    read-only --out)."""
    return [a for a in argv if a != "--dry-run"]


def broken_adapter_config(d: Path) -> list[str]:
    (adapter(d / "a") / "adapter_config.json").write_text('{"r": 2,\n')
    return merge_argv(d)


def adapter_config_text(d: Path, text: str) -> list[str]:
    (adapter(d / "a") / "adapter_config.json").write_text(text)
    return merge_argv(d)


def missing_adapter(d: Path) -> list[str]:
    argv = merge_argv(d)
    return [a.replace(f"task={d / 'a'}", f"task={d / 'nope'}") for a in argv]


def edited(folder: Path, **fields: object) -> Path:
    """An adapter folder whose adapter_config.json has ``fields`` set (None: left out)."""
    file = folder / "adapter_config.json"
    config = {**json.loads(file.read_text()), **fields}
    file.write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


def truncated(folder: Path) -> Path:
    """An adapter folder whose adapter_model.safetensors lost its last bytes (a full disk, an
    interrupted copy)."""
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    return folder


def adapter_bytes(folder: Path, data: bytes) -> Path:
    """An adapter folder whose adapter_model.safetensors holds ``data``."""
    (folder / "adapter_model.safetensors").write_bytes(data)
    return folder


def merge_of(a: Path) -> list[str]:
    """``merge_argv`` with ``a`` (the case folder's ``a``) as the task adapter."""
    return merge_argv(a.parent)


def probe_adapter(d: Path, m: Path, a: Path) -> list[str]:
    return probe_argv(d, m, plain(d), "--adapter", str(a))


def latin1_massive(d: Path, m: Path) -> list[str]:
    row = json.dumps(massive_row(2, "play [music_genre : café]"), ensure_ascii=False)
    return eval_argv(d, m, "slots", massive(d, [GOOD_MASSIVE[0], row], "latin-1"), "en")


def latin1_task(d: Path, m: Path) -> list[str]:
    bad = lines(d / "bad.jsonl", ['{"prompt": "café", "response": "x"}'], "latin-1")
    return train_argv(d, m, "--data.task_data", str(bad))


def bad_xsid(d: Path) -> list[str]:
    shutil.copy(FIXTURES / "tasks" / "xsid_bad.conll", d / "de.test.conll")
    return prepare_argv(d, "slots", f"xsid:{d}", "de", "--split", "test")


def config_file(d: Path, *rows: str) -> str:
    return str(lines(d / "c.yaml", list(rows)))


PROC = "/proc/midalign-test"
LATIN1 = ["the people", "all is égal", *EN[2:]]
NOT_B = ["1\tOle\tX-PER", "2\tbor\tO", "3\ti\tO", "4\tOslo\tB-LOC"]
FOO = ["1\tOle\tB-FOO", "2\tbor\tO", "3\ti\tO", "4\tOslo\tB-LOC"]
LONG = "all " * 40 + "free"  # 164 characters: more than 32 per token for --max-tokens 4
NOT_OURS = (
    "exists and holds files midalign did not write (no .midalign in it); give a new folder "
    "(--overwrite replaces only midalign's own outputs)"
)
NER_FORMS = (
    "uner:DIR (UNER <lang>_<treebank>-ud-<split>.iob2) | aya:FILE/DIR (templated_uner_llm "
    "parquet, or a copy of the repo) | aya:CohereLabs/aya_collection or hub id"
)
COLUMNS = ["1\tOle\tB-PER", "2 bor O", "3\ti\tO", "4\tOslo\tB-LOC"]
CASES = [
    # ---------------------------------------------------------------- probe
    Case("probe/missing file",
         lambda d, m: probe_argv(d, m, f"parallel:{d / 'nope.en'},{lines(d / 't.de', DE)}"),
         ("nope.en", "not found")),
    Case("probe/empty file", lambda d, m: probe_argv(d, m, plain(d, en=[])), ("t.en", "empty")),
    Case("probe/latin-1 bytes", lambda d, m: probe_argv(d, m, plain(d, LATIN1, encoding="latin-1")),
         ("t.en:2", "UTF-8")),
    Case("probe/ragged files", lambda d, m: probe_argv(d, m, plain(d, de=DE[:2])),
         ("t.en", "5 lines", "t.de", "2")),
    Case("probe/empty line", lambda d, m: probe_argv(d, m, plain(d, en=[EN[0], "", *EN[2:]])),
         ("t.en:2", "empty line")),
    Case("probe/duplicate sentences",
         lambda d, m: probe_argv(d, m, plain(d, en=[*EN[:4], EN[1]])),
         ("eng_Latn", "sentence 5 repeats sentence 2")),
    Case("probe/unknown language code",
         lambda d, m: probe_argv(d, m, FLORES, "--langs", "eng,xx-nonsense"),
         ("--langs", "xx-nonsense")),
    Case("probe/language absent", lambda d, m: probe_argv(d, m, FLORES, "--langs", "eng,fra"),
         ("fra", "flores")),
    Case("probe/k >= n", lambda d, m: probe_argv(d, m, plain(d), "--k", "5"), ("--k", "5")),
    Case("probe/layer out of range", lambda d, m: probe_argv(d, m, plain(d), "--layers", "9"),
         ("--layers", "9")),
    Case("probe/malformed scores JSON",
         lambda d, m: probe_argv(d, m, plain(d), "--scores", str(lines(d / "s.json", ["{"]))),
         ("s.json:", "JSON")),
    Case("probe/scores nested too deeply",
         lambda d, m: probe_argv(d, m, plain(d), "--scores",
                                 str(lines(d / "s.json", ["[" * 100_000 + "]" * 100_000]))),
         ("--scores", "s.json", "nested too deeply")),
    Case("probe/scores not numbers",
         lambda d, m: probe_argv(d, m, plain(d), "--scores", config_file(d, "eng,high")),
         ("--scores", "c.yaml", "no scores")),
    Case("probe/adapter of another base model",
         lambda d, m: probe_argv(d, m, plain(d), "--adapter", str(adapter(d / "a", "base-b"))),
         ("midalign probe: error: --adapter: ", "/a was trained on base-b, not on --model ",
          "/tiny-gemma3 (if they are the same model, set base_model_name_or_path in its "
          "adapter_config.json)")),
    Case("probe/adapter config r not the tensors' rank",
         lambda d, m: probe_adapter(d, m, edited(adapter(d / "a", None), r=1)),
         ("midalign probe: error: --adapter: ", "/a/adapter_model.safetensors: base_model.model."
          "model.layers.0.self_attn.q_proj.lora_A.weight has shape [2, 4] (rank 2) but ",
          "/a/adapter_config.json says r 1; the config's r must be the tensors' rank")),
    Case("probe/truncated adapter weights",
         lambda d, m: probe_adapter(d, m, truncated(adapter(d / "a", None))),
         ("midalign probe: error: --adapter: ", "/a/adapter_model.safetensors: not a readable "
          "safetensors file (", "); is it truncated? save the adapter again")),
    Case("probe/adapter config r a string",
         lambda d, m: probe_adapter(d, m, edited(adapter(d / "a", None), r="2")),
         ("midalign probe: error: --adapter: ", "/a/adapter_config.json: \"r\" must be a "
          "positive integer, not '2'")),
    Case("probe/adapter for another shape of model",  # the whole fault, no "trained for" guess
         lambda d, m: probe_adapter(d, m, adapter(d / "a", str(m))),
         ("midalign probe: error: --adapter: ", "/a does not fit this model: Error(s) in loading "
          "state_dict for PeftModelForCausalLM: size mismatch for base_model.model.model.layers.0."
          "self_attn.q_proj.lora_A.default.weight: copying a param with shape torch.Size([2, 4]) "
          "from checkpoint, the shape in current model is torch.Size([2, 32]). (and 1 more)")),
    Case("probe/output exists", lambda d, m: existing(d, probe_argv(d, m, plain(d))),
         ("--out", "exists", "--overwrite"), existing_out=True),
    Case("probe/unwritable output", lambda d, m: unwritable(d, probe_argv(d, m, plain(d))),
         ("--out", PROC), out=PROC),
    Case("probe/NUL byte", lambda d, m: probe_argv(d, m, plain(d, en=[EN[0], "all\0", *EN[2:]])),
         ("t.en:2: NUL byte (UTF-16 or binary?); convert the file to UTF-8",)),
    Case("probe/one language",
         lambda d, m: probe_argv(d, m, f"parallel:{lines(d / 't.en', EN)}", "--langs", "en"),
         ("error: --langs en: the probe needs at least 2 distinct languages; got 1 (eng_Latn)",)),
    Case("probe/one language twice", lambda d, m: probe_argv(d, m, FLORES, "--langs", "eng,eng"),
         ("error: --langs eng,eng: the probe needs at least 2 distinct languages; got 1 "
          "(eng_Latn)",)),
    Case("probe/line too long for --max-tokens",
         lambda d, m: probe_argv(d, m, plain(d, en=[EN[0], LONG, *EN[2:]]), "--max-tokens", "4"),
         ("t.en:2: sentence of 164 characters, too long for --max-tokens 4 (a missing line "
          "break?)",)),
    Case("probe/sentence over --max-tokens",
         lambda d, m: probe_argv(d, m, plain(d), "--max-tokens", "4"),
         ("t.en:1: sentence of 5 tokens, over --max-tokens 4",)),
    Case("probe/output is a file", lambda d, m: a_file_as_out(d, probe_argv(d, m, plain(d))),
         ("notes.txt is a file; give a folder that does not exist yet",)),
    Case("probe/output under a file", lambda d, m: under_a_file(d, probe_argv(d, m, plain(d))),
         ("error: --out: ", "/notes.txt/out: ", "/notes.txt is a file, not a folder"),
         out="notes.txt/out"),
    Case("probe/output is a file, --overwrite",
         lambda d, m: a_file_as_out(d, probe_argv(d, m, plain(d), "--overwrite")),
         ("notes.txt is a file; give a folder that does not exist yet",)),
    Case("probe/--overwrite of a folder midalign did not write",
         lambda d, m: existing(d, probe_argv(d, m, plain(d), "--overwrite")),
         ("/out " + NOT_OURS,), existing_out=True),
    Case("probe/one file for two languages",
         lambda d, m: probe_argv(d, m, f"parallel:{lines(d / 't.en', EN)},{d / 't.en'}"),
         ("error: parallel: ", "/t.en is given twice; give one file per language")),
    Case("probe/two files with the same sentences",
         lambda d, m: probe_argv(d, m, plain(d, de=EN)),
         ("eng_Latn (", "/t.en) and deu_Latn (", "/t.de) hold the same 5 sentences, which would "
          "pair each sentence with itself; give each language its own translation")),
    Case("probe/files in another order than --langs",
         lambda d, m: probe_argv(d, m, f"parallel:{lines(d / 't.en', EN)},{lines(d / 'b', DE)}",
                                 "--langs", "de,en"),
         ("error: --langs: parallel: ", "/t.en is eng_Latn by its suffix but stands where "
          "deu_Latn is given; give the files and the languages in the same order")),
    Case("probe/file suffix not among --langs",
         lambda d, m: probe_argv(d, m, plain(d), "--langs", "en,ja"),
         ("error: --langs: parallel: ", "/t.de is deu_Latn by its suffix, not one of eng_Latn, "
          "jpn_Jpan; give its language or rename the file")),
    Case("probe/line of zero-width spaces",
         lambda d, m: probe_argv(d, m, plain(d, en=[EN[0], "\u200b \u200b", *EN[2:]])),
         ("t.en:2: empty line (only invisible characters U+200B); every line must hold a "
          "sentence",)),
    Case("probe/--group given twice",
         lambda d, m: probe_argv(d, m, plain(d), "--group", "low=de", "--group", "low=en"),
         ("error: --group low: given twice; give each group once, with all its codes",)),
    Case("probe/--group of a language not probed",
         lambda d, m: probe_argv(d, m, plain(d), "--group", "low=de,sw"),
         ("error: --group low: swh_Latn not among the probed languages (eng_Latn, deu_Latn)",)),
    # ---------------------------------------------------------------- eval
    Case("eval/missing data",
         lambda d, m: eval_argv(d, m, "slots", f"massive:{d / 'nope'}", "en"),
         ("nope", "not found")),
    Case("eval/empty file", lambda d, m: eval_argv(d, m, "slots", massive(d, []), "en"),
         ("en-US.jsonl", "empty")),
    Case("eval/latin-1 bytes", latin1_massive, ("en-US.jsonl:2", "UTF-8")),
    Case("eval/malformed JSON",
         lambda d, m: eval_argv(d, m, "slots", massive(d, [GOOD_MASSIVE[0], '{"id": 2,']), "en"),
         ("en-US.jsonl:2", "JSON")),
    Case("eval/malformed MASSIVE annotation",
         lambda d, m: eval_argv(d, m, "slots", massive(d, [GOOD_MASSIVE[0], json.dumps(
             massive_row(2, "wake me at [time : five"))]), "en"),
         ("en-US.jsonl:2",)),
    Case("eval/IOB2 unknown tag", lambda d, m: eval_argv(d, m, "ner", uner(d, NOT_B), "da"),
         ("da_ddt-ud-test.iob2:3", "X-PER")),
    Case("eval/IOB2 wrong column count",
         lambda d, m: eval_argv(d, m, "ner", uner(d, COLUMNS), "da"),
         ("da_ddt-ud-test.iob2:4", "tab-separated")),
    Case("eval/unknown language code",
         lambda d, m: eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "en,qq-nonsense"),
         ("--langs", "qq-nonsense")),
    Case("eval/language absent",
         lambda d, m: eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "de"),
         ("massive", "deu")),
    Case("eval/truncated adapter weights",
         lambda d, m: [*eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "en"), "--adapter",
                       str(truncated(adapter(d / "a", None)))],
         ("midalign eval: error: --adapter: ", "/a/adapter_model.safetensors: not a readable "
          "safetensors file (")),
    Case("eval/output exists",
         lambda d, m: existing(d, eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "en")),
         ("--out", "exists"), existing_out=True),
    Case("eval/unwritable output",
         lambda d, m: unwritable(d, eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "en")),
         ("--out", PROC), out=PROC),
    Case("eval/IOB2 unknown entity type", lambda d, m: eval_argv(d, m, "ner", uner(d, FOO), "da"),
         ("da_ddt-ud-test.iob2:3: unknown tag B-FOO (expected O, or B-/I- with PER, ORG, LOC or "
          "OTH)",)),
    Case("eval/not a data set", lambda d, m: eval_argv(d, m, "ner", "nonsense", "da"),
         (f"error: 'nonsense': not a NER data set ({NER_FORMS})",)),
    Case("eval/--overwrite of a folder midalign did not write",
         lambda d, m: existing(d, [*eval_argv(d, m, "slots", massive(d, GOOD_MASSIVE), "en"),
                                   "--overwrite"]),
         ("/out " + NOT_OURS,), existing_out=True),
    Case("eval/mt locale as a direction", lambda d, m: eval_argv(d, m, "mt", ALMA, "fr-CA"),
         ("midalign eval: error: --langs: 'fr-CA' is a locale (language fr, region CA), not a "
          "translation direction: give directions SRC-TGT of two language codes, e.g. "
          "fr-en,en-fr, or a bare fr for both directions with English",)),
    Case("eval/mt direction into itself", lambda d, m: eval_argv(d, m, "mt", ALMA, "de-deu"),
         ("midalign eval: error: --langs: 'de-deu' translates deu_Latn into itself; a direction "
          "is SRC-TGT of two languages, e.g. de-en",)),
    Case("eval/missing ALMA folder",
         lambda d, m: eval_argv(d, m, "mt", f"alma:{d / 'nope'}", "de-en"),
         ("midalign eval: error: alma:", "/nope: directory not found")),
    # ---------------------------------------------------------------- data prepare
    Case("data/missing data", lambda d, m: prepare_argv(d, "ner", f"uner:{d / 'nope'}", "da"),
         ("nope", "not found")),
    Case("data/malformed xSID", lambda d, m: bad_xsid(d), ("de.test.conll:4",)),
    Case("data/output exists",
         lambda d, m: existing(d, prepare_argv(d, "slots", massive(d, GOOD_MASSIVE), "en")),
         ("--out", "exists"), existing_out=True),
    Case("data/output under a file",
         lambda d, m: under_a_file(d, prepare_argv(d, "slots", massive(d, GOOD_MASSIVE), "en")),
         ("error: --out: ", "/notes.txt/out: ", "/notes.txt is a file, not a folder"),
         out="notes.txt/out"),
    Case("data/unwritable output",
         lambda d, m: unwritable(d, prepare_argv(d, "slots", massive(d, GOOD_MASSIVE), "en",
                                                 "--split", "test")),
         (f"error: --out: cannot create {PROC}/out (No such file or directory)",), out=PROC),
    Case("data/--source not a data set", lambda d, m: prepare_argv(d, "ner", "nonsense", "da"),
         (f"error: 'nonsense': not a NER data set ({NER_FORMS})",)),
    Case("data/--overwrite of a file midalign did not write",
         lambda d, m: a_file_as_out(
             d, prepare_argv(d, "slots", massive(d, GOOD_MASSIVE), "en", "--overwrite")),
         ("notes.txt exists and is not an instruction .jsonl file midalign wrote; give a new file "
          "(--overwrite replaces only midalign's own outputs)",)),
    # ---------------------------------------------------------------- train
    Case("train/missing task data",
         lambda d, m: train_argv(d, m, "--data.task_data", str(d / "nope.jsonl")),
         ("nope.jsonl", "not found")),
    Case("train/empty task data", lambda d, m: train_argv(d, m, task=[]), ("task.jsonl", "empty")),
    Case("train/malformed JSON",
         lambda d, m: train_argv(d, m, task=[json.dumps({"prompt": "a", "response": "b"}), "{"]),
         ("task.jsonl:2", "JSON")),
    Case("train/latin-1 bytes", latin1_task, ("bad.jsonl:1", "UTF-8")),
    Case("train/temperature <= 0", lambda d, m: train_argv(d, m, "--temperature", "0"),
         ("--temperature", "positive")),
    Case("train/layer out of range", lambda d, m: train_argv(d, m, "--align-layers", "9"),
         ("--align-layers", "9")),
    Case("train/unknown language code",
         lambda d, m: train_argv(d, m, "--data.align_langs", "zz-nonsense"), ("zz-nonsense",)),
    Case("train/language absent", lambda d, m: train_argv(d, m, "--data.align_langs", "fra"),
         ("tatoeba", "fra")),
    Case("train/alignment file suffix not among --align-langs",
         lambda d, m: train_argv(d, m, "--data.align_data", plain(d), "--data.align_langs", "ja"),
         ("error: --align-langs (and English, the pivot, last): parallel: ", "/t.de is deu_Latn "
          "by its suffix, not one of jpn_Jpan, eng_Latn; give its language or rename the file")),
    Case("train/malformed YAML config",
         lambda d, m: train_argv(d, m, "--config", config_file(d, "optim:", "  lr: [1, 2")),
         ("c.yaml:",)),
    Case("train/unknown config key",
         lambda d, m: train_argv(d, m, "--config", config_file(d, "optim:", "  learning_rat: 1")),
         ("c.yaml", "learning_rat")),
    Case("train/every step in warm-up",
         lambda d, m: train_argv(d, m, "--optim.warmup_ratio", "0.03"),
         ("midalign train: error: --warmup-ratio 0.03 over 1 optimizer step (--max-steps 1): the "
          "inverse_sqrt schedule's learning rate is 0 throughout (its warm-up starts at 0), so "
          "training would not change the adapter; set --warmup-ratio 0 or train more steps",)),
    Case("train/resume with a changed option", lambda d, m: resumed(d, "--temperature", "0.05"),
         ("midalign train: error: --resume: ",
          "/out was trained with a different config (align.temperature: 0.1 -> 0.05)"),
         existing_out=True),
    Case("train/output exists", lambda d, m: existing(d, train_argv(d, m)),
         ("--out", "exists"), existing_out=True),
    Case("train/unwritable output", lambda d, m: unwritable(d, train_argv(d, m)),
         ("--out", PROC), out=PROC),
    Case("train/--overwrite of a folder midalign did not write",
         lambda d, m: existing(d, train_argv(d, m, "--overwrite")),
         ("/out " + NOT_OURS,), existing_out=True),
    Case("train/no epochs", lambda d, m: train_argv(d, m, "--max-steps", "-1", "--epochs", "0"),
         ("midalign train: error: --epochs must be a positive number of passes over the task "
          "data, not 0 (or give --max-steps)",)),
    Case("train/negative epochs",
         lambda d, m: train_argv(d, m, "--max-steps", "-1", "--epochs", "-1"),
         ("midalign train: error: --epochs must be a positive number", "not -1 ")),
    Case("train/--max-steps 0", lambda d, m: train_argv(d, m, "--max-steps", "0"),
         ("midalign train: error: --max-steps must be positive, or -1 to count in --epochs, "
          "not 0",)),
    Case("train/unfinished run without --resume", lambda d, m: unfinished(d, train_argv(d, m)),
         ("midalign train: error: --out: ", "/out holds an unfinished run (last complete "
          "checkpoint: checkpoint-2); continue it with `midalign train --out ", "/out --resume`, "
          "or pass --overwrite to discard its checkpoints and start over"), existing_out=True),
    Case("train/align schedule with dev task data",  # once a KeyError at the first evaluation
         lambda d, m: train_argv(d, m, "--schedule", "align", "--dev-data", str(d / "task.jsonl")),
         ("midalign train: error: --dev-data: the align schedule trains no task",
          "(--align-dev-pairs): leave the dev data out")),
    # ---------------------------------------------------------------- merge
    Case("merge/negative weights", lambda d, m: merge_argv(d, "1.5,-0.5"),
         ("--weights", "non-negative")),
    Case("merge/weights not summing to 1", lambda d, m: merge_argv(d, "0.5,0.4"),
         ("--weights", "sum to 1")),
    Case("merge/different base models", lambda d, m: merge_argv(d, base_b="base-b"),
         ("--adapters", "base-a", "base-b")),
    Case("merge/missing adapter",
         lambda d, m: missing_adapter(d),
         ("nope", "not found")),
    Case("merge/malformed adapter config", lambda d, m: broken_adapter_config(d),
         ("adapter_config.json:", "JSON")),
    Case("merge/adapter config with a 5000-digit number",
         lambda d, m: adapter_config_text(d, '{"r": ' + "9" * 5000 + "}"),
         ("--adapters", "adapter_config.json", "4300 digits")),
    Case("merge/adapter config not an object", lambda d, m: adapter_config_text(d, "[1, 2]"),
         ("--adapters", "adapter_config.json", "JSON object")),
    Case("merge/adapter config r not the tensors' rank",  # was merged as rank 1 + 2 over 2 + 2
         lambda d, m: merge_of(edited(adapter(d / "a"), r=1)),
         ("midalign merge: error: --adapters: ", "/a/adapter_model.safetensors: base_model.model."
          "model.layers.0.self_attn.q_proj.lora_A.weight has shape [2, 4] (rank 2) but ",
          "/a/adapter_config.json says r 1; the config's r must be the tensors' rank")),
    Case("merge/truncated adapter weights", lambda d, m: merge_of(truncated(adapter(d / "a"))),
         ("midalign merge: error: --adapters: ", "/a/adapter_model.safetensors: not a readable "
          "safetensors file (Error while deserializing header: incomplete metadata, file not "
          "fully covered); is it truncated? save the adapter again")),
    Case("merge/adapter weights not safetensors",
         lambda d, m: merge_of(adapter_bytes(adapter(d / "a"), b"PK\x03\x04 a zip")),
         ("midalign merge: error: --adapters: ", "/a/adapter_model.safetensors: not a readable "
          "safetensors file (")),
    Case("merge/adapter config without r",
         lambda d, m: merge_of(edited(adapter(d / "a"), r=None)),
         ("midalign merge: error: --adapters: ", "/a/adapter_config.json: no \"r\" (a LoRA "
          "config gives its rank r and lora_alpha)")),
    Case("merge/adapter config r a string",
         lambda d, m: merge_of(edited(adapter(d / "a"), r="2")),
         ("midalign merge: error: --adapters: ", "/a/adapter_config.json: \"r\" must be a "
          "positive integer, not '2'")),
    Case("merge/adapter config lora_alpha a string",
         lambda d, m: merge_of(edited(adapter(d / "a"), lora_alpha="4")),
         ("midalign merge: error: --adapters: ", "/a/adapter_config.json: \"lora_alpha\" must "
          "be a number, not '4'")),
    Case("merge/weights not finite", lambda d, m: merge_argv(d, "nan,0.1"),
         ("midalign merge: error: --weights must be finite numbers, got [nan, 0.1]",)),
    Case("merge/duplicate adapter names",
         lambda d, m: [a.replace("align=", "task=") for a in merge_argv(d)],
         ("midalign merge: error: --adapters: two adapters are named 'task'; give each its own "
          "name, e.g. task=DIR align=DIR",)),
    Case("merge/output exists", lambda d, m: existing(d, merge_argv(d)),
         ("--out", "exists"), existing_out=True),
    Case("merge/unwritable output", lambda d, m: unwritable(d, merge_argv(d)),
         ("--out", PROC), out=PROC),
    Case("merge/--overwrite of a folder midalign did not write",
         lambda d, m: existing(d, [*merge_argv(d), "--overwrite"]),
         ("/out " + NOT_OURS,), existing_out=True),
    # ---------------------------------------------------------------- run
    Case("run/missing recipe",
         lambda d, m: ["run", str(d / "nope.yaml"), "--out", str(d / "out")],
         ("nope.yaml", "not found")),
    Case("run/recipe is a folder", recipe_folder,
         ("error: recipe ", "/recipes is a folder, not a recipe file; give one of its YAML "
          "files (a.yaml, b.yaml)")),
    Case("run/output is a file", lambda d, m: a_file_as_out(d, recipe_with(d)),
         ("error: --out: ", "/notes.txt is a file; give a folder (a new one, or an earlier "
          "run's to reuse its finished steps)")),
    Case("run/output under a file", lambda d, m: under_a_file(d, recipe_with(d)),
         ("error: --out: cannot create ", "/notes.txt/out: ", "/notes.txt is a file, not a "
          "folder"), out="notes.txt/out"),
    Case("run/unwritable output", lambda d, m: unwritable(d, not_dry(recipe_with(d))),
         (f"error: --out: cannot create {PROC}/out (No such file or directory)",), out=PROC),
    Case("run/malformed YAML", lambda d, m: recipe_argv(d, "name: x\nseeds: [1, 2\n"),
         ("recipe.yaml:",)),
    Case("run/unknown key", lambda d, m: recipe_argv(d, "name: x\nmodle: default\n"),
         ("recipe.yaml", "modle")),
    Case("run/empty recipe", lambda d, m: recipe_argv(d, ""), ("recipe.yaml", "empty")),
    Case("run/system temperature <= 0", lambda d, m: recipe_with(d, temperature=-1),
         ("midalign run: error: ", "/recipe.yaml: system aligned: train.align.temperature must be "
          "positive, not -1.0")),
    Case("run/unknown task", lambda d, m: recipe_with(d, task="sentiment"),
         ("midalign run: error: ", "/recipe.yaml: task.name: unknown task 'sentiment' (one of "
          "slots, mt, ner, topic)")),
    Case("run/unknown language code", lambda d, m: recipe_with(d, langs="eng, xx"),
         ("midalign run: error: ", "/recipe.yaml: task.train.langs: unknown language code 'xx' "
          "(use ISO 639-1, ISO 639-3 or FLoRes codes such as de, deu, deu_Latn)")),
    Case("run/model not there", lambda d, m: recipe_model(d, str(d / "models" / "nope")),
         ("midalign run: error: ", "/recipe.yaml: model: ", "/models/nope does not exist")),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture):
    argv = case.build(tmp_path, model_dir)
    out = tmp_path / case.out
    before = sorted(p.name for p in out.iterdir()) if case.existing_out else None
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err, "no error message"
    errors = [line for line in err if line.startswith(f"midalign {argv[0]}")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    line = errors[0]
    assert line.startswith(f"midalign {command}: error: ") or line.startswith(
        f"midalign {argv[0]}: error: "
    ), line
    for fragment in case.expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    if case.existing_out:
        assert sorted(p.name for p in out.iterdir()) == before
        assert (out / "keep.txt").read_text() == "earlier results\n"
    else:
        assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.glob(f".{out.name}.*")] if out.parent.is_dir() else []
    assert not leftovers, leftovers


def test_the_matrix_covers_every_command():
    commands = {c.id.split("/")[0] for c in CASES}
    assert commands == {"probe", "eval", "data", "train", "merge", "run"}
    assert len(CASES) >= 45
