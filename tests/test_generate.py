"""Batched greedy generation (left padding, grouped prefill, KV cache, stop rules, finished rows
leaving the batch), `evaluate`, and the `eval` and `data prepare` commands end to end on tiny
random models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_same_numbers,
    precision,
    spy_loaded_dtypes,
    tiny_model,
    tiny_model_or_sliding,
    tiny_tokenizer,
)
from transformers import DynamicCache

from midalign.cli import main
from midalign.errors import InputError
from midalign.evaluation.run import evaluate
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.slot_filling import SYSTEM
from midalign.modeling import decode
from midalign.modeling import generate as gen
from midalign.modeling.prompting import encode_prompt
from midalign.probe.run import read_scores

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"
PROMPTS = [
    "the law is equal",
    "a",
    "everyone is born free and equal in dignity and rights",
    "der mensch ist frei",
    "le droit et la loi",
]


def _prompts(tok) -> list[list[int]]:
    return [encode_prompt(tok, text, system="people") for text in PROMPTS]


def _model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return tiny_model_or_sliding(family, dtype)


def _repeats(text: str) -> bool:
    """A stop rule the random models meet at different steps: some word came twice."""
    words = text.split()
    return len(set(words)) < len(words)


def _one_generate_per_prompt(model, tok, prompts, max_new_tokens: int, stop) -> tuple[list, list]:
    """The reference: transformers' own decoding loop on one prompt at a time. Its answers,
    and how many tokens each row generated (the step at which it finished)."""
    config = gen.greedy_config(model, tok, max_new_tokens)
    answers, steps = [], []
    for p in prompts:
        criteria = [gen.TextStop(tok, len(p), stop)]
        out = model.generate(
            input_ids=torch.tensor([p]), generation_config=config, stopping_criteria=criteria
        )
        answers.append(tok.decode(out[0, len(p) :], skip_special_tokens=True))
        steps.append(out.shape[1] - len(p))
    return answers, steps


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gemma3-sliding"])
def test_batched_equals_one_generate_per_prompt(family: str) -> None:
    model, tok = _model(family), tiny_tokenizer()
    prompts = _prompts(tok)
    single, _ = _one_generate_per_prompt(model, tok, prompts, 12, _repeats)
    assert any(single)  # the random model does say something
    for batch_size in (len(prompts), 3, 1):  # any batching, the same answers
        batched = gen.generate(
            model,
            tok,
            prompts,
            max_new_tokens=12,
            stop=_repeats,
            batch_size=batch_size,
            progress=False,
        )
        assert batched == single


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3-sliding"])
def test_finished_rows_leave_the_batch_and_the_prefill_skips_padding(family: str) -> None:
    model, tok = _model(family), tiny_tokenizer()
    prompts = _prompts(tok)
    _, steps = _one_generate_per_prompt(model, tok, prompts, 12, _repeats)
    assert len(set(steps)) > 1  # rows finish at different steps (EOS, the stop rule, the cap)
    shapes = []  # [rows, tokens] of every forward
    model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    gen.generate(model, tok, prompts, max_new_tokens=12, stop=_repeats, batch_size=len(prompts))
    lengths = [len(p) for p in prompts]  # all > 1, so a forward of 1 token is a decode step
    groups = decode.prefill_groups(lengths)
    assert len(groups) > 1
    assert [s for s in shapes if s[1] > 1] == [(len(g), lengths[g[0]]) for g in groups]
    # after step s, exactly the rows that generate more than s tokens are still computed
    assert [s[0] for s in shapes if s[1] == 1] == [
        sum(n > s for n in steps) for s in range(1, max(steps))
    ]


def test_streamed_head_is_the_linear_head_and_is_put_back() -> None:
    model = _model("llama", torch.float64)
    head = model.get_output_embeddings()
    h = torch.randn(3, 5, head.in_features, dtype=torch.float64)  # [B, T, d]
    with decode._streamed_head(model):
        assert "forward" in head.__dict__  # W·hᵀ in place of h·Wᵀ
        streamed = head(h)
    assert "forward" not in head.__dict__
    assert_same_numbers(streamed, torch.nn.functional.linear(h, head.weight), torch.float64)


def test_prefill_groups_by_hand() -> None:
    # longest first; a row joins while it is at least 90 % of its group's first row:
    # 74 | 57, 56 (>= 51.3) | 51 (< 51.3) | 30, 27 (>= 27)
    assert decode.prefill_groups([30, 74, 57, 56, 51, 27]) == [[1], [2, 3], [4], [0, 5]]
    assert decode.prefill_groups([5, 5, 5]) == [[0, 1, 2]]


@pytest.mark.parametrize(
    ("family", "dtype"), [("llama", torch.float64), ("gemma3-sliding", torch.float32)]
)
def test_grouped_prefill_is_the_padded_prefill(family: str, dtype: torch.dtype) -> None:
    """Logits and cache of the grouped prefill against one forward over the padded batch,
    compared at the real (unmasked) positions; the cache lengths the masks see are equal."""
    model, tok = _model(family, dtype), tiny_tokenizer()
    prompts = _prompts(tok)
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :], mask[r, width - len(p) :] = torch.tensor(p), 1
    position = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate makes them
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    kwargs = dict(attention_mask=mask, position_ids=position, use_cache=True, logits_to_keep=1)
    with torch.inference_mode():
        grouped = decode._prefill(model, ids, dict(kwargs, cache=caches[0]))
        padded = model(input_ids=ids, cache=caches[1], **kwargs).logits[:, -1]
    assert len(decode.prefill_groups(mask.sum(1).tolist())) > 1
    assert_same_numbers(grouped, padded, precision(family.split("-")[0], dtype))
    for ours, theirs in zip(caches[0].layers, caches[1].layers, strict=True):
        assert ours.get_seq_length() == theirs.get_seq_length() == width
        stored = theirs.keys.shape[-2]  # the whole width, or a sliding layer's window
        assert ours.keys.shape == theirs.keys.shape
        assert stored < width if theirs.is_sliding else stored == width
        real = mask[:, -stored:].bool()  # [B, stored]
        for a, b in ((ours.keys, theirs.keys), (ours.values, theirs.values)):
            a, b = a.transpose(1, 2)[real], b.transpose(1, 2)[real]  # [real tokens, heads, dim]
            assert_same_numbers(a, b, precision(family.split("-")[0], dtype))


def test_stop_rule_cuts_each_row_at_its_stop() -> None:
    model, tok = tiny_model("llama", n_layers=2), tiny_tokenizer()
    prompts = _prompts(tok)
    full = gen.generate(model, tok, prompts, max_new_tokens=12, progress=False)
    words = [w for text in full for w in text.split()]
    word = max(set(words), key=words.count)  # a word some answers contain and others may not

    def at_word(text: str) -> bool:
        return word in text.split()

    stopped = gen.generate(model, tok, prompts, max_new_tokens=12, stop=at_word, progress=False)
    assert stopped != full  # some row was cut short
    for long, short in zip(full, stopped, strict=True):
        tokens = long.split()
        expected = tokens[: tokens.index(word) + 1] if word in tokens else tokens
        assert short.split() == expected


def test_stop_rules() -> None:
    for name in ("slots", "mt", "topic"):
        newline = get_task(name).stop
        assert not newline("time: five am") and newline("time: five am\nUser")
        assert not newline("\n\ntime")  # leading blank lines are not the end of an answer
    json = get_task("ner").stop
    assert json('{"Results": []} more') and not json('{"Results": [\n')


def test_evaluate_counts_garbage_and_scores_per_language() -> None:
    task = get_task("topic")
    examples = task.read(f"sib200:{FIXTURES / 'sib200'}", ["de", "ja"], "test")
    model, tok = tiny_model("gemma3", n_layers=2), tiny_tokenizer()
    results = evaluate(
        model,
        tok,
        task,
        examples,
        max_new_tokens=4,
        progress=False,
        groups={"all": ["deu_Latn", "jpn_Jpan"]},
    )
    per = results["per_language"]
    assert list(per) == ["deu_Latn", "jpn_Jpan"]
    assert per["deu_Latn"]["n"] == 3 and per["jpn_Jpan"]["n"] == 2
    # a random model never names a topic: all answers unparseable, scored as wrong, no crash
    assert results["unparseable"] == sum(not p["ok"] for p in results["predictions"])
    for key, scores in per.items():
        preds = [p for p in results["predictions"] if p["key"] == key]
        assert all(p["ok"] == (p["parsed"] is not None) for p in preds)
        assert scores["accuracy"] == sum(p["parsed"] == p["reference"] for p in preds) / len(preds)
        assert scores["unparseable"] == sum(not p["ok"] for p in preds)
    assert results["groups"]["all"]["accuracy"] == pytest.approx(
        (per["deu_Latn"]["accuracy"] + per["jpn_Jpan"]["accuracy"]) / 2
    )
    assert results["predictions"][0]["prompt"].endswith("User: Nimm den Nachtzug.\nAssistant: ")


def _adapter(model_dir: Path, path: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # B = 0 at init; make the adapter change the model
            torch.nn.init.normal_(param, std=0.5)
    peft.save_pretrained(path)
    return path


def test_eval_command_writes_everything(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--task",
        "topic",
        "--data",
        f"sib200:{FIXTURES / 'sib200'}",
        "--langs",
        "de,ja",
        "--max-new-tokens",
        "3",
        "--group",
        "asian=ja",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["langs"] == ["deu_Latn", "jpn_Jpan"]
    assert results["groups"]["asian"]["languages"] == ["jpn_Jpan"]
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and {"prompt", "reference", "output", "parsed"} <= set(
        json.loads(lines[0])
    )
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["language"] for r in rows] == ["deu_Latn", "jpn_Jpan"]
    assert (out / "scores.png").stat().st_size > 0
    probe = read_scores(out / "probe_scores.json")
    assert probe == {k: v["accuracy"] for k, v in results["per_language"].items()}
    assert main(args) == 2  # --out exists, no --overwrite

    adapter = _adapter(tiny_model_dir, tmp_path / "adapter")
    with_adapter = tmp_path / "eval-adapter"
    assert main([*args[:-1], str(with_adapter), "--adapter", str(adapter)]) == 0
    before = [json.loads(x)["output"] for x in lines]
    after = [json.loads(x)["output"] for x in (with_adapter / "predictions.jsonl").open()]
    assert before != after  # the adapter is applied


def test_eval_mt_writes_probe_scores_by_direction(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mt"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tiny_model_dir),
                "--task",
                "mt",
                "--data",
                f"alma:{FIXTURES / 'alma'}",
                "--langs",
                "de",
                "--split",
                "valid",
                "--max-new-tokens",
                "3",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert set(results["per_language"]) == {"deu_Latn-eng_Latn", "eng_Latn-deu_Latn"}
    assert any("tok:13a" in s for s in results["signatures"])
    assert list(read_scores(out / "probe_scores_xx-eng_Latn.json")) == ["deu_Latn"]
    assert list(read_scores(out / "probe_scores_eng_Latn-xx.json")) == ["deu_Latn"]


def test_eval_bad_input_exits_2(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    base = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        f"sib200:{FIXTURES / 'sib200'}",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main([*base, "--task", "topic", "--langs", "fr"]) == 2
    assert "no fra_Latn" in capsys.readouterr().err
    assert main([*base, "--task", "topic", "--langs", "qq"]) == 2
    assert main([*base, "--task", "slots", "--langs", "de"]) == 2
    with pytest.raises(SystemExit) as e:
        main([*base, "--task", "poetry", "--langs", "de"])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists()


def test_data_prepare_writes_the_training_contract(tmp_path: Path) -> None:
    out = tmp_path / "slots.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "--task",
                "slots",
                "--source",
                f"massive:{FIXTURES / 'massive'}",
                "--langs",
                "en,de",
                "--split",
                "test",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert rows[-1] == {
        "system": SYSTEM,
        "prompt": "wake me up at five am this week",
        "response": "time: five am; date: this week",
        "lang": "eng_Latn",
        "id": "1",
        "task": "slots",
    }
    assert [r["lang"] for r in rows] == ["deu_Latn", "deu_Latn", "eng_Latn"]
    ner = tmp_path / "ner.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "--task",
                "ner",
                "--source",
                f"uner:{FIXTURES / 'uner'}",
                "--langs",
                "da",
                "--split",
                "test",
                "--limit",
                "2",
                "--out",
                str(ner),
            ]
        )
        == 0
    )
    # --limit samples by id (tasks.base.limit_per_key): 2 of test-0..2, in file order
    rows = [json.loads(x) for x in ner.read_text(encoding="utf-8").splitlines()]
    assert [row["id"] for row in rows] == ["test-1", "test-2"]
    assert rows[0]["system"] is None and rows[0]["task"] == "ner"
    assert json.loads(rows[0]["response"])["Results"][1]["Text"] == "Novo Nordisk"
    assert (
        main(
            [
                "data",
                "prepare",
                "--task",
                "ner",
                "--source",
                f"uner:{FIXTURES / 'uner'}",
                "--langs",
                "da",
                "--split",
                "test",
                "--out",
                str(ner),
            ]
        )
        == 2
    )


class _Planned(torch.nn.Module):
    """A "model" whose answer to a prompt is fixed by the prompt's last token."""

    PLAN = {10: [4, 5, 6, 7], 11: [4, 2, 0, 0], 12: [29, 5, 6, 7]}  # a b c d | a <eos> | z b c d

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria, **kwargs):
        new = torch.tensor([self.PLAN[int(row[-1])] for row in input_ids])
        return torch.cat([input_ids, new], dim=1)


def test_answers_that_run_to_the_cap_are_counted_and_the_cap_shown(caplog, capsys):
    prompts = [[1, 10], [1, 11], [1, 12]]

    def at_z(text: str) -> bool:
        return "z" in text.split()

    answers = gen.generate(_Planned(), tiny_tokenizer(), prompts, max_new_tokens=4, stop=at_z)
    assert answers == ["a b c d", "a", "z b c d"]
    # only the first ran to the cap: the second ended with EOS, the third at its stop rule
    assert [r.getMessage() for r in caplog.records if r.name == "midalign.modeling.generate"] == [
        "1 of 3 answers ran to the cap of 4 new tokens without finishing; they take most of the "
        "time (the cap is the task's, unless eval's --max-new-tokens or a recipe's "
        "eval.max_new_tokens sets it)"
    ]
    assert "generating (up to 4 new tokens): 100%" in capsys.readouterr().err


def test_eval_summary_counts_unparseable_answers_and_shows_the_first(
    tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    data = f"sib200:{FIXTURES / 'sib200'}"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "topic", "--data", data]
    assert main([*argv, "--langs", "de,ja", "--max-new-tokens", "3", "--out", str(out)]) == 0
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").open(encoding="utf-8")]
    first = predictions[0]
    assert not any(p["ok"] for p in predictions)  # a random model names no topic
    assert (
        "5 of 5 answers could not be parsed and scored as empty; the first "
        f"(deu_Latn, id {first['id']}): {first['output']!r}\n"
    ) in capsys.readouterr().out


def test_data_prepare_overwrites_only_its_own_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "slots.jsonl"
    source = f"massive:{FIXTURES / 'massive'}"
    argv = ["data", "prepare", "--task", "slots", "--source", source, "--langs", "en"]
    argv += ["--split", "test", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"midalign data: error: --out: {out} already exists (pass --overwrite to replace it)\n"
    )
    assert main([*argv, "--overwrite"]) == 0
    out.write_text('{"prompt": "mine"}\n')  # JSON lines, but not an instruction file
    assert main([*argv, "--overwrite"]) == 2
    assert capsys.readouterr().err.endswith(
        f"--out: {out} exists and is not an instruction .jsonl file midalign wrote; give a new "
        "file (--overwrite replaces only midalign's own outputs)\n"
    )
    assert out.read_text() == '{"prompt": "mine"}\n'


def test_two_data_prepare_runs_into_one_out_never_lose_a_language_silently(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Two runs started together into one --out, one a language: both pass the check made
    before reading; the later to finish used to replace the other's file and report success
    too. It refuses now, naming what the file holds, and writes nothing."""
    from midalign.evaluation.tasks.base import Task

    out = tmp_path / "slots.jsonl"
    argv = ["data", "prepare", "--task", "slots", "--source", f"massive:{FIXTURES / 'massive'}"]
    argv += ["--split", "test", "--out", str(out)]
    read = Task.read

    def read_while_the_other_run_finishes(self: Task, *args: object) -> list:
        monkeypatch.setattr(Task, "read", read)
        assert main([*argv, "--langs", "de"]) == 0
        return read(self, *args)

    monkeypatch.setattr(Task, "read", read_while_the_other_run_finishes)
    assert main([*argv, "--langs", "en"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"midalign data: error: --out: {out} appeared while this command ran (another run into "
        "the same --out?); it holds 2 deu_Latn instructions, left as it is; this run's 1 "
        "eng_Latn are not written (pass --overwrite to replace it, or give one run every "
        "language in --langs)"
    )
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["lang"] for r in rows] == ["deu_Latn", "deu_Latn"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slots.jsonl"]

    out.unlink()  # asked to replace: the later run's file stands
    monkeypatch.setattr(Task, "read", read_while_the_other_run_finishes)
    assert main([*argv, "--langs", "en", "--overwrite"]) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["lang"] for r in rows] == ["eng_Latn"]


def test_eval_resolves_dtype_auto_and_records_it(tiny_model_dir, tmp_path, monkeypatch) -> None:
    import midalign.cli.eval
    import midalign.modeling.dtypes

    monkeypatch.setattr(midalign.modeling.dtypes, "cpu_bf16_feature", lambda: "AVX512-BF16")
    loaded = spy_loaded_dtypes(monkeypatch, midalign.cli.eval)
    out = tmp_path / "eval"
    data = f"sib200:{FIXTURES / 'sib200'}"
    argv = ["eval", "--model", str(tiny_model_dir), "--task", "topic", "--data", data]
    assert main([*argv, "--langs", "de", "--max-new-tokens", "2", "--out", str(out)]) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["dtype"] == "bfloat16" and config["dtype_requested"] == "auto"
    assert config["dtype_reason"] == "this CPU has AVX512-BF16"
    assert loaded == [torch.bfloat16]


def test_more_new_tokens_than_positions_is_refused_before_any_allocation() -> None:
    """A mistyped --max-new-tokens (100000000000) tried to allocate terabytes of cache."""
    model, tok = tiny_model("llama"), tiny_tokenizer()  # 128 positions
    with pytest.raises(
        InputError, match=r"^--max-new-tokens 100000000000: more than the model's 128"
    ):
        gen.generate(model, tok, [[1, 5, 6]], max_new_tokens=100_000_000_000, progress=False)
    assert gen.generate(model, tok, [[1, 5, 6]], max_new_tokens=2, progress=False)  # in range
