"""The report's answer-by-answer section (midalign.report.items) on a hand-made outcome: 2
systems × 2 seeds × 2 languages × 3 sentences, every number worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from midalign.report.items import analyse, budgets, effect_groups, markdown

# correct answers [seed][lang][item] per system
SFT = {
    1: {"eng": [1, 1, 0], "deu": [1, 0, 0], "fra": [0, 0, 0]},
    2: {"eng": [1, 0, 0], "deu": [0, 0, 1], "fra": [0, 1, 0]},
}
ALT = {
    1: {"eng": [1, 1, 1], "deu": [1, 1, 0], "fra": [1, 0, 0]},
    2: {"eng": [1, 0, 1], "deu": [1, 0, 1], "fra": [1, 1, 1]},
}


def _outcome(tmp_path: Path, alt_budget: dict | None = None) -> tuple[dict, Path]:
    steps = tmp_path / "steps"
    scores: dict[str, dict] = {}
    for system, table in (("SFT", SFT), ("alt", ALT)):
        for seed, langs in table.items():
            step = f"eval-{system}-seed{seed}-abc"
            (steps / step).mkdir(parents=True)
            rows = [
                {
                    "id": f"s{i}",
                    "key": lang,
                    "reference": "travel",
                    "parsed": "travel" if ok else "sports",
                }
                for lang, answers in langs.items()
                for i, ok in enumerate(answers)
            ]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            (steps / step / "predictions.jsonl").write_text(text)
            scores.setdefault(system, {})[str(seed)] = {"metric": "accuracy", "step": step}
    budget = {"optimizer_steps": 30, "task_examples": 480, "align_pairs": 0}
    alt = alt_budget or {**budget, "align_pairs": 480}
    training = {
        "SFT": {s: {"budget": {"adapter": budget}} for s in ("1", "2")},
        "alt": {s: {"budget": {"adapter": alt}} for s in ("1", "2")},
    }
    retrieval = {
        system: {
            str(seed): {
                "per_language": {"eng": 0.5 + 0.1 * k, "deu": 0.2 + 0.3 * k, "fra": 0.1 + 0.5 * k}
            }
            for seed in (1, 2)
        }
        for k, system in enumerate(("SFT", "alt"))
    }
    return {"scores": scores, "training": training, "retrieval": retrieval}, steps


def test_effects_items_sd_and_correlation_by_hand(tmp_path: Path) -> None:
    outcome, steps = _outcome(tmp_path)
    groups = {"supervised": ["eng"], "transfer_x": ["deu", "fra"]}
    section = analyse(outcome, groups, steps)
    assert section["reference"] == "SFT"
    assert section["items_per_language"] == {"eng": 3, "deu": 3, "fra": 3}
    effects = section["effects"]["alt"]
    # eng: seed 1 (0,0,1), seed 2 (0,0,1) → +2/6; deu: seed 1 (0,1,0), seed 2 (1,0,0) → +2/6;
    # fra: seed 1 (1,0,0), seed 2 (1,0,1) → +3/6; transfer_x: (2/6 + 3/6) / 2
    assert effects["supervised"]["estimate"] == pytest.approx(2 / 6, abs=1e-12)
    assert effects["transfer_x"]["estimate"] == pytest.approx(5 / 12, abs=1e-12)
    assert effects["supervised"]["seeds"] == 2 and effects["supervised"]["items"] == 3
    lo, hi = effects["transfer_x"]["ci"]
    assert lo < 5 / 12 < hi and effects["transfer_x"]["mde"] > 0
    gains = section["task_gain_per_language"]["alt"]
    assert gains == pytest.approx({"eng": 2 / 6, "deu": 2 / 6, "fra": 3 / 6})
    # the SD over the transfer languages' gains, and retrieval gains 0.1, 0.3, 0.5 vs them
    assert section["transfer_sd"]["alt"] == pytest.approx(np.std([2 / 6, 3 / 6], ddof=1))
    r = np.corrcoef([0.1, 0.3, 0.5], [2 / 6, 2 / 6, 3 / 6])[0, 1]
    assert section["correlation"]["alt"]["r"] == pytest.approx(r)
    assert section["correlation"]["alt"]["n"] == 3
    lines = "\n".join(markdown(section))
    assert "Test items per language: 3 (3 languages)." in lines
    assert "| alt | supervised | +33.3 |" in lines
    assert "| alt | 30 | 480 | 480 |" in lines and "Warning" not in lines


def test_transfer_group_and_budget_warning(tmp_path: Path) -> None:
    groups = {"supervised": ["eng"], "transfer_a": ["deu"], "transfer_b": ["fra"]}
    assert effect_groups(groups)["transfer"] == ["deu", "fra"]
    assert "transfer" not in effect_groups({"supervised": ["eng"], "other": ["deu"]})
    outcome, _ = _outcome(
        tmp_path, {"optimizer_steps": 60, "task_examples": 480, "align_pairs": 480}
    )
    table, warnings = budgets(outcome)
    assert table["alt"]["optimizer_steps"] == [60]
    assert warnings == [
        "alt and SFT differ in optimizer steps ([60] vs [30]): their difference mixes the "
        "method with the budget"
    ]


def test_one_seed_gives_the_estimate_without_an_interval(tmp_path: Path) -> None:
    outcome, steps = _outcome(tmp_path)
    for system in outcome["scores"]:
        del outcome["scores"][system]["2"]
    section = analyse(outcome, {"supervised": ["eng"], "x": ["deu"]}, steps)
    assert section["items_per_language"] == {"eng": 3, "deu": 3, "fra": 3}
    e = section["effects"]["alt"]["x"]
    assert e["ci"] is None and e["estimate"] == pytest.approx(1 / 3)  # deu seed 1: (0,1,0)
    assert "| alt | x | +33.3 | – (one seed) |" in "\n".join(markdown(section))
