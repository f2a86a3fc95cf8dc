"""`midalign eval` on the offline default model and real data: 6–10 examples of each task.

The scores in results.json are recomputed here from predictions.jsonl by an independent route
(sacrebleu's corpus_bleu called directly, plain counting), so a wrong wiring between
generation, parsing and scoring fails even though a 270M base model scores low.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data

from midalign.cli import main

pytestmark = pytest.mark.slow


def _eval(
    tmp_path: Path, task: str, data: Path, langs: str, limit: int, *extra: str
) -> tuple[dict, list]:
    out = tmp_path / task
    code = main(
        [
            "eval",
            "--model",
            "default",
            "--task",
            task,
            "--data",
            str(data),
            "--langs",
            langs,
            "--limit",
            str(limit),
            "--zero-shot",
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return results, [json.loads(x) for x in lines]


def test_topic_and_slots(tmp_path: Path) -> None:
    results, preds = _eval(tmp_path, "topic", shared_data("sib200"), "en,de", 5)
    assert results["n"] == len(preds) == 10
    for key, scores in results["per_language"].items():
        mine = [p for p in preds if p["key"] == key]
        assert scores["accuracy"] == sum(p["parsed"] == p["reference"] for p in mine) / len(mine)
    assert results["unparseable"] == sum(not p["ok"] for p in preds)

    results, preds = _eval(tmp_path, "slots", shared_data("xsid"), "en,de", 5)
    assert results["n"] == 10
    assert "Olly" in preds[0]["prompt"]  # the zero-shot prompt
    assert all(0.0 <= s["f1"] <= 1.0 for s in results["per_language"].values())


def test_mt_and_ner(tmp_path: Path) -> None:
    from sacrebleu import corpus_bleu

    results, preds = _eval(
        tmp_path, "mt", shared_data("wmt23"), "en-de", 8, "--max-new-tokens", "32"
    )
    assert results["n"] == 8
    ours = results["per_language"]["eng_Latn-deu_Latn"]["bleu"]
    hyps = [p["parsed"] for p in preds]
    assert ours == pytest.approx(corpus_bleu(hyps, [[p["reference"] for p in preds]]).score)

    results, preds = _eval(
        tmp_path, "ner", shared_data("uner"), "da,sv", 3, "--max-new-tokens", "48"
    )
    assert results["n"] == 6
    assert results["unparseable"] == sum(not p["ok"] for p in preds)
    assert all(p["parsed"] == [] for p in preds if not p["ok"])
