"""Every hub data set the project names, read from a folder laid out exactly like its repository
(same file names, configs, splits and columns, a few rows per file) through the very call a hub
id makes: a stand-in for the hub hands ``datasets.load_dataset`` the folder in place of the repo.

The layouts, and where they were read (file trees and dataset cards of the repos, the loading
scripts, code that reads them), are written next to each reader; a hub that changes its layout
is a change to one of these folders. No test here touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from midalign.data import load_parallel
from midalign.data.hub import FLORES_PLUS, PARQUET_EXPORT
from midalign.data.pairs import HF_TATOEBA, load_pairs
from midalign.errors import InputError
from midalign.evaluation.tasks import get_task

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict[str, Path], list]:
    """``repos[hub_id] = folder`` serves that folder for the id; ``calls`` records what the
    readers asked for. A copy of the Parquet conversion is a checkout of that branch already,
    so ``revision`` is recorded and not passed on."""
    import datasets

    real = datasets.load_dataset
    repos: dict[str, Path] = {}
    calls: list[tuple[str, dict]] = []

    def load_dataset(path: str, **kwargs):
        calls.append((path, dict(kwargs)))
        kwargs.pop("revision", None)
        return real(str(repos.get(path, path)), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr("midalign.data.hub.hub_offline", lambda: False)
    monkeypatch.setattr("midalign.data.hub.hub_unreachable", lambda: None)  # the hub answers
    return repos, calls


def card(root: Path, configs: dict[str, dict[str, str]]) -> None:
    """A dataset card whose ``configs:`` header maps config -> split -> file pattern, the way
    the hub (and ``datasets``) resolve configs of a repo without a loading script."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, path in splits.items():
            lines += [f"  - split: {split}", f"    path: {path}"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join([*lines, "---", "", "# A card", ""]))


def parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# --- sentence-transformers/parallel-sentences-tatoeba (hf-tatoeba) ---------------------------


def test_parallel_sentences_tatoeba(hub, tmp_path: Path) -> None:
    repos, calls = hub
    root = tmp_path / "parallel-sentences-tatoeba"
    configs = {}
    for code, words in {"da": ("Jeg", "Du"), "sv": ("Jag", "Du"), "ja": ("私", "君")}.items():
        config = f"en-{code}"
        configs[config] = {s: f"{config}/{s}-*" for s in ("train", "dev")}
        for split in ("train", "dev"):
            rows = [
                {"english": f"{who} sing ({split}).", "non_english": f"{word} {split}."}
                for who, word in zip(("I", "You"), words, strict=True)
            ]
            parquet(root / config / f"{split}-00000-of-00001.parquet", rows)
    card(root, configs)
    repos[HF_TATOEBA] = root

    pairs = load_pairs("hf-tatoeba", ["da", "swe"])
    assert calls == [
        (HF_TATOEBA, {"name": "en-da", "split": "train"}),
        (HF_TATOEBA, {"name": "en-sv", "split": "train"}),
    ]
    assert pairs == {
        "dan_Latn": [("Jeg train.", "I sing (train)."), ("Du train.", "You sing (train).")],
        "swe_Latn": [("Jag train.", "I sing (train)."), ("Du train.", "You sing (train).")],
    }
    assert load_pairs(f"hf-tatoeba:{root}", ["da", "swe"]) == pairs


def test_hf_tatoeba_names_what_loads_instead(hub, tmp_path: Path) -> None:
    repos, _ = hub
    root = tmp_path / "parallel-sentences-tatoeba"
    card(root, {"en-de": {"train": "en-de/train-*"}})
    parquet(
        root / "en-de" / "train-00000-of-00001.parquet", [{"english": "A.", "non_english": "B."}]
    )
    repos[HF_TATOEBA] = root
    # not among its ~50 languages (the paper's slot-filling ones cy, jv, sw, tl are not)
    with pytest.raises(InputError, match=r"config en-cy split train: cannot load .*tatoeba:DIR"):
        load_pairs("hf-tatoeba", ["cy"])
    for old in ("Helsinki-NLP/tatoeba", "Helsinki-NLP/tatoeba_mt"):
        with pytest.raises(InputError, match=f"loading-script.*hf-tatoeba \\({HF_TATOEBA}\\)"):
            load_pairs(f"hf-tatoeba:{old}", ["de"])
    loose = tmp_path / "loose"
    parquet(loose / "en-de.parquet", [{"english": "A.", "non_english": "B."}])
    with pytest.raises(InputError, match="no README.md; expected a copy of"):
        load_pairs(f"hf-tatoeba:{loose}", ["de"])
    with pytest.raises(InputError, match=r"^hf-tatoeba:\./nowhere: directory not found$"):
        load_pairs("hf-tatoeba:./nowhere", ["de"])


# --- openlanguagedata/flores_plus ------------------------------------------------------------


def test_flores_plus(hub, tmp_path: Path) -> None:
    """<split>/<config>.jsonl, configs in the card; FLORES+ names Mandarin cmn_Hans and Tagalog
    fil_Latn where FLoRes-200 has zho_Hans and tgl_Latn."""
    repos, calls = hub
    root = tmp_path / "flores_plus"
    texts = {
        "eng_Latn": ["A cat.", "A dog."],
        "cmn_Hans": ["一只猫。", "一只狗。"],
        "fil_Latn": ["Isang pusa.", "Isang aso."],
    }
    script = {"eng_Latn": "Latn", "cmn_Hans": "Hans", "fil_Latn": "Latn"}
    for config, sentences in texts.items():
        for split in ("dev", "devtest"):
            path = root / split / f"{config}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [
                {
                    "id": i,
                    "iso_639_3": config[:3],
                    "iso_15924": script[config],
                    "glottocode": "abcd1234",
                    "text": f"{text} ({split})",
                    "url": f"https://example.org/{i}",
                    "domain": "wikinews",
                }
                for i, text in enumerate(sentences, 1)
            ]
            if config != "eng_Latn":  # joined on id, not on the line order
                rows.reverse()
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    card(root, {c: {s: f"{s}/{c}.jsonl" for s in ("dev", "devtest")} for c in texts})
    repos[FLORES_PLUS] = root

    corpus = load_parallel(f"hf:{FLORES_PLUS}", ["en", "zh", "tl"], split="devtest")
    assert calls == [
        (FLORES_PLUS, {"name": config, "split": "devtest"})
        for config in ("eng_Latn", "cmn_Hans", "fil_Latn")
    ]
    assert corpus.ids["tgl_Latn"] == ["1", "2"]
    assert corpus.texts["zho_Hans"] == ["一只猫。 (devtest)", "一只狗。 (devtest)"]
    assert corpus.texts["tgl_Latn"] == ["Isang pusa. (devtest)", "Isang aso. (devtest)"]
    assert load_parallel(f"hf:{root}", ["en", "zh", "tl"], split="devtest").texts == corpus.texts


# --- Davlan/sib200 (its Parquet conversion, the fall-back; main: test_hub_today.py) ----------


def test_sib200_parquet_conversion(hub, tmp_path: Path) -> None:
    """What datasets read while the repo was a loading script; read when main does not load
    (here: served without its card, main's configs unknown)."""
    repos, calls = hub
    root = tmp_path / "sib200-refs-convert-parquet"
    (root / ".gitattributes").parent.mkdir(parents=True)
    (root / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")
    for config in ("eng_Latn", "deu_Latn"):
        for split in ("train", "validation", "test"):
            rows = [
                {"index_id": 7, "category": "sports", "text": f"{config} goal ({split})."},
                {"index_id": 3, "category": "travel", "text": f"{config} trip ({split})."},
            ]
            parquet(root / config / split / "0000.parquet", rows)
    repos["Davlan/sib200"] = root

    topic = get_task("topic")
    examples = topic.read("hf:Davlan/sib200", ["de"], "dev")
    assert calls == [
        ("Davlan/sib200", {"split": "validation", "name": "deu_Latn"}),
        (
            "Davlan/sib200",
            {"split": "validation", "data_dir": "deu_Latn", "revision": PARQUET_EXPORT},
        ),
    ]
    assert [(ex.id, ex.reference, ex.text) for ex in examples] == [
        ("7", "sports", "deu_Latn goal (validation)."),
        ("3", "travel", "deu_Latn trip (validation)."),
    ]
    assert topic.read(f"hf:{root}", ["de"], "dev") == examples
    with pytest.raises(InputError, match=r"config fra_Latn split test: no .*fra_Latn"):
        topic.read(f"hf:{root}", ["fr"], "test")


# --- AmazonScience/massive (a loading script: its Parquet conversion) ------------------------


def test_massive_parquet_conversion(hub, tmp_path: Path) -> None:
    repos, calls = hub
    root = tmp_path / "massive-refs-convert-parquet"
    for locale, utt, value in (("de-DE", "spiele jazz", "jazz"), ("en-US", "play jazz", "jazz")):
        for split in ("train", "validation", "test"):
            rows = [
                {
                    "id": "1",
                    "locale": locale,
                    "partition": {"validation": "dev"}.get(split, split),
                    "scenario": 6,
                    "intent": 40,
                    "utt": utt,
                    "annot_utt": utt.replace(value, f"[music_genre : {value}]"),
                    "worker_id": "8",
                    "slot_method": [{"slot": "music_genre", "method": "translation"}],
                },
                {
                    "id": "2",
                    "locale": locale,
                    "partition": {"validation": "dev"}.get(split, split),
                    "scenario": 0,
                    "intent": 2,
                    "utt": "stop",
                    "annot_utt": "stop",
                    "worker_id": "9",
                    "slot_method": [],
                },
            ]
            parquet(root / locale / split / "0000.parquet", rows)
    repos["AmazonScience/massive"] = root

    slots = get_task("slots")
    examples = slots.read("hf:AmazonScience/massive", ["de"], "test")
    assert calls == [
        (
            "AmazonScience/massive",
            {"split": "test", "data_dir": "de-DE", "revision": PARQUET_EXPORT},
        )
    ]
    assert [(ex.id, ex.text, ex.reference) for ex in examples] == [
        ("1", "spiele jazz", [("music_genre", "jazz")]),
        ("2", "stop", []),
    ]
    assert slots.read(f"hf:{root}", ["de"], "test") == examples
    assert len(slots.read(f"hf:{root}", ["de", "en"], "dev")) == 4


# --- CohereLabs/aya_collection (templated_uner_llm) ------------------------------------------


def test_aya_collection_templated_uner_llm(hub, tmp_path: Path) -> None:
    repos, calls = hub
    root = tmp_path / "aya_collection"
    question = (
        "Please identify all the named entities ... Considering the input sentence below, what "
        "is the output result? "
    )
    entity = {"TypeName": "LOC", "Text": "Lisboa", "Start": 14, "End": 20}
    configs = {}
    for config in ("templated_uner_llm", "aya_dataset"):
        configs[config] = {s: f"{config}/{s}-*" for s in ("train", "validation", "test")}
        for split in ("train", "validation", "test"):
            row = {
                "id": 1,
                "inputs": question + "Maria mora em Lisboa.",
                "targets": json.dumps({"Results": [entity]}),
                "dataset_name": "Uner-LLM-Instruct" if config != "aya_dataset" else "Aya",
                "sub_dataset_name": "-",
                "task_type": "named-entity-recognition",
                "template_id": 1,
                "language": "por",
                "script": "Latn",
                "split": split,
            }
            parquet(root / config / f"{split}-00000-of-00001.parquet", [row])
    card(root, configs)
    repos["CohereLabs/aya_collection"] = root

    ner = get_task("ner")
    examples = ner.read("aya:CohereLabs/aya_collection", ["pt"], "dev")
    assert calls == [
        ("CohereLabs/aya_collection", {"name": "templated_uner_llm", "split": "validation"})
    ]
    assert [(ex.lang, ex.text, ex.reference) for ex in examples] == [
        ("por_Latn", "Maria mora em Lisboa.", [("LOC", "Lisboa", 14, 20)])
    ]
    assert ner.read(f"aya:{root}", ["pt"], "dev") == examples


def test_aya_collection_language_and_script(hub, tmp_path: Path) -> None:
    """A row's language is its ``language`` and ``script`` columns together: UNER has Chinese
    in both scripts (zh_gsd Traditional, zh_gsdsimp Simplified), and its Serbian (sr_set) is
    in Latin script, which a bare ``srp`` (FLoRes: srp_Cyrl) would miss."""
    repos, _ = hub
    root = tmp_path / "aya_collection"
    rows = []
    for n, (language, script, sentence) in enumerate(
        [
            ("zho", "Hans", "玛丽住在北京。"),
            ("zho", "Hant", "瑪麗住在臺北。"),
            ("srp", "Latn", "Marija živi u Beogradu."),
        ],
        1,
    ):
        rows.append(
            {
                "id": n,
                "inputs": f"...\n{sentence}\n",
                "targets": json.dumps({"Results": []}),
                "dataset_name": "Uner-LLM-Instruct",
                "sub_dataset_name": "-",
                "task_type": "named-entity-recognition",
                "template_id": 1,
                "language": language,
                "script": script,
                "split": "test",
            }
        )
    parquet(root / "templated_uner_llm" / "test-00000-of-00001.parquet", rows)
    card(root, {"templated_uner_llm": {"test": "templated_uner_llm/test-*"}})
    repos["CohereLabs/aya_collection"] = root

    read = get_task("ner").read
    source = "aya:CohereLabs/aya_collection"
    assert [(ex.lang, ex.text) for ex in read(source, ["zh"], "test")] == [
        ("zho_Hans", "玛丽住在北京。")
    ]
    assert [(ex.lang, ex.text) for ex in read(source, ["zho_Hant", "sr_Latn"], "test")] == [
        ("zho_Hant", "瑪麗住在臺北。"),
        ("srp_Latn", "Marija živi u Beogradu."),
    ]
    assert sorted({ex.lang for ex in read(f"aya:{root}", [], "test")}) == [
        "srp_Latn",
        "zho_Hans",
        "zho_Hant",
    ]
    with pytest.raises(InputError) as other_script:
        read(source, ["sr"], "test")
    assert str(other_script.value) == (
        "aya:CohereLabs/aya_collection: no srp_Cyrl rows, but srp_Latn: ask for that script "
        "(--langs srp_Latn)"
    )


# --- what the paper recipes align on exists ---------------------------------------------------

# parallel-sentences-tatoeba's pair configs (en-<code>, besides "all"): the languages listed for
# it in the MILCO paper's appendix (ICLR 2026, table of training data), which agree with the
# repo's file tree as far as it was readable (en-ar ... en-mk, en-nl, en-sv, en-tr).
PARALLEL_TATOEBA = (
    "ar bg ca cs da de el es et fa fi fr gl gu he hi hr hu hy id it ja ka ko ku lt lv mk mn mr "
    "ms my nb nl pl pt ro ru sk sl sq sr sv th tr uk ur vi zh"
).split()


@pytest.mark.parametrize("name", ["paper_slots.yaml", "paper_ner.yaml", "paper_mt.yaml"])
def test_paper_recipes_align_on_languages_their_data_has(name: str) -> None:
    from midalign.experiments.recipe import load_recipe
    from midalign.languages import iso639_1, to_flores

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / name)
    data = recipe.train["data"]
    langs = [iso639_1(to_flores(lang)) for lang in data["align_langs"]]
    if data["align_data"].startswith("hf-tatoeba"):
        assert set(langs) <= set(PARALLEL_TATOEBA)
    else:  # LASER's Tatoeba (112 languages) or the task's own ALMA pairs
        assert data["align_data"].startswith(("tatoeba:", "alma:"))
