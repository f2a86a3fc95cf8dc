"""Hub data sets as they are today, where they changed after their readers were written:
FLORES+ 2.0's renamed configs, SIB-200's per-language configs on main (no longer a loading
script), the parallel-sentences-tatoeba configs without a dev split, MASSIVE 1.1's 52nd locale.
Each is read from a folder laid out like the repo, served for the hub id by test_hub_layouts'
stand-in; no test here touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_hub_layouts import card, hub, parquet  # noqa: F401  (hub: the stand-in, a fixture)

from midalign.data import load_parallel
from midalign.data.hub import FLORES_PLUS
from midalign.data.pairs import HF_TATOEBA, load_pairs
from midalign.errors import InputError
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.topic import LABELS

SIB200 = "Davlan/sib200"


@pytest.fixture
def configs(hub, monkeypatch: pytest.MonkeyPatch):  # noqa: F811  (the fixture imported above)
    """The stand-in also lists a served repo's configs, from its card as the hub does; a repo
    it does not serve cannot be listed, as a gated one without a login."""
    import datasets

    repos, _ = hub
    real = datasets.get_dataset_config_names

    def get_dataset_config_names(path: str, **kwargs):
        if path not in repos and not Path(path).is_dir():
            raise ConnectionError(f"{path}: not served")
        return real(str(repos.get(path, path)), **kwargs)

    monkeypatch.setattr(datasets, "get_dataset_config_names", get_dataset_config_names)
    return hub


def flores_plus_copy(root: Path, configs: list[str]) -> Path:
    """FLORES+'s layout (test_hub_layouts.test_flores_plus): ``<split>/<config>.jsonl``, two
    sentences a config whose text names the config."""
    for config in configs:
        for split in ("dev", "devtest"):
            rows = [
                {
                    "id": i,
                    "iso_639_3": config[:3],
                    "iso_15924": config[4:8],
                    "glottocode": config[9:] or "abcd1234",
                    "text": f"{config} {i} ({split}).",
                    "url": f"https://example.org/{i}",
                    "domain": "wikinews",
                }
                for i in (1, 2)
            ]
            path = root / split / f"{config}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    card(root, {c: {s: f"{s}/{c}.jsonl" for s in ("dev", "devtest")} for c in configs})
    return root


# --- openlanguagedata/flores_plus 2.0 --------------------------------------------------------

# FLoRes-200 code -> FLORES+ 2.0 config (a glottocode now tells the varieties apart)
RENAMED = {
    "apc_Arab": "apc_Arab_nort3139",  # North Levantine Arabic
    "ajp_Arab": "apc_Arab_sout3123",  # South Levantine Arabic (ISO 639-3 merged ajp into apc)
    "aka_Latn": "twi_Latn_asan1239",  # Akan: Asante Twi
    "twi_Latn": "twi_Latn_akua1239",  # Twi: Akuapem Twi
}


def test_flores_plus_renamed_configs(hub, tmp_path: Path) -> None:  # noqa: F811
    repos, calls = hub
    repos[FLORES_PLUS] = flores_plus_copy(tmp_path / "flores_plus", ["eng_Latn", *RENAMED.values()])

    corpus = load_parallel(f"hf:{FLORES_PLUS}", ["en", *RENAMED], split="dev")
    assert calls == [
        (FLORES_PLUS, {"name": config, "split": "dev"})
        for config in ("eng_Latn", *RENAMED.values())
    ]
    assert corpus.texts == {
        lang: [f"{config} 1 (dev).", f"{config} 2 (dev)."]
        for lang, config in {"eng_Latn": "eng_Latn", **RENAMED}.items()
    }


def test_flores_plus_unknown_config_names_the_nearest(configs, tmp_path: Path) -> None:
    """A config the repo lacks is named as such, with the nearest it has, and not blamed on
    the gating: the repo's card was read, so the login works."""
    repos, _ = configs
    root = flores_plus_copy(tmp_path / "flores_plus", ["eng_Latn", "arb_Arab", "arz_Arab"])
    repos[FLORES_PLUS] = root
    for source in (FLORES_PLUS, str(root)):
        with pytest.raises(InputError) as e:
            load_parallel(f"hf:{source}", ["en", "ary_Arab"])
        assert str(e.value) == (
            f"hf:{source} config ary_Arab split dev: unknown config ary_Arab; the nearest it "
            "has: arz_Arab, arb_Arab"
        )


def test_flores_plus_unlisted_configs_are_the_gating(configs, monkeypatch) -> None:
    """A repo whose configs cannot be listed (gated, no login): the error says how to get in."""
    import datasets

    def gated(*args, **kwargs):
        raise datasets.exceptions.DatasetNotFoundError(
            f"Dataset '{FLORES_PLUS}' is a gated dataset on the Hub. You must be authenticated"
        )

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(InputError, match=r"config eng_Latn split dev: cannot load .* is gated: "):
        load_parallel("hf:flores_plus", ["en", "de"])


# --- Davlan/sib200: configs on main, the Parquet conversion as the fall-back -----------------


def sib200_main_copy(root: Path, configs: list[str]) -> Path:
    """The repo's main branch: ``data/<code>/{train,dev,test}.tsv`` (``index_id``,
    ``category``, ``text``) and ``labels.txt``, and a card with one config per code whose
    splits ``train``, ``validation``, ``test`` name those files (the hub's "Add all configs"
    commit, #3)."""
    card_configs = {}
    for config in configs:
        folder = root / "data" / config
        folder.mkdir(parents=True)
        for name in ("train", "dev", "test"):
            (folder / f"{name}.tsv").write_text(
                "index_id\tcategory\ttext\n"
                f"7\tsports\t{config} goal ({name}).\n"
                f"3\ttravel\t{config} trip ({name}).\n"
            )
        (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
        card_configs[config] = {
            split: f"data/{config}/{name}.tsv"
            for split, name in (("train", "train"), ("validation", "dev"), ("test", "test"))
        }
    card(root, card_configs)
    return root


def test_sib200_reads_the_configs_on_main(configs, tmp_path: Path) -> None:
    repos, calls = configs
    root = sib200_main_copy(tmp_path / "sib200", ["eng_Latn", "deu_Latn"])
    repos[SIB200] = root

    topic = get_task("topic")
    examples = topic.read(f"hf:{SIB200}", ["de"], "dev")
    assert calls == [(SIB200, {"name": "deu_Latn", "split": "validation"})]
    assert [(ex.id, ex.lang, ex.reference, ex.text) for ex in examples] == [
        ("7", "deu_Latn", "sports", "deu_Latn goal (dev)."),
        ("3", "deu_Latn", "travel", "deu_Latn trip (dev)."),
    ]
    assert topic.read(f"hf:{root}", ["de"], "dev") == examples
    # a language SIB-200 lacks: named with the nearest configs, from main's card
    for source in (SIB200, str(root)):
        with pytest.raises(InputError) as e:
            topic.read(f"hf:{source}", ["deu_Grek"], "test")
        assert str(e.value) == (
            f"hf:{source} config deu_Grek split test: unknown config deu_Grek; the nearest it "
            "has: deu_Latn"
        )


# --- sentence-transformers/parallel-sentences-tatoeba: en-ur and en-sk have no dev split ------


def test_hf_tatoeba_reads_train_where_there_is_no_dev(hub, tmp_path: Path) -> None:  # noqa: F811
    """en-ur and en-sk have a train split only (the other configs have dev too). hf-tatoeba
    reads train, whatever the alignment split says (it is flores' and sib200's), so both work."""
    repos, calls = hub
    root = tmp_path / "parallel-sentences-tatoeba"
    splits = {"en-de": ("train", "dev"), "en-ur": ("train",), "en-sk": ("train",)}
    for config, names in splits.items():
        for split in names:
            rows = [{"english": f"I sing ({n}).", "non_english": f"{config} {n}."} for n in (1, 2)]
            parquet(root / config / f"{split}-00000-of-00001.parquet", rows)
    card(root, {c: {s: f"{c}/{s}-*" for s in names} for c, names in splits.items()})
    repos[HF_TATOEBA] = root

    pairs = load_pairs("hf-tatoeba", ["ur", "sk"], split="dev")
    assert calls == [
        (HF_TATOEBA, {"name": "en-ur", "split": "train"}),
        (HF_TATOEBA, {"name": "en-sk", "split": "train"}),
    ]
    assert pairs["urd_Arab"] == [("en-ur 1.", "I sing (1)."), ("en-ur 2.", "I sing (2).")]
    assert pairs["slk_Latn"] == [("en-sk 1.", "I sing (1)."), ("en-sk 2.", "I sing (2).")]


# --- AmazonScience/massive 1.1: 52 locales ----------------------------------------------------


def test_massive_has_52_locales_with_catalan() -> None:
    """MASSIVE 1.1 added ca-ES to 1.0's 51 locales; the hub's repo has all 52 as configs."""
    from midalign.evaluation.tasks.slot_readers import MASSIVE_LOCALES, _locale_lang

    assert len(MASSIVE_LOCALES) == len(set(MASSIVE_LOCALES)) == 52
    assert _locale_lang("ca-ES") == "cat_Latn"
