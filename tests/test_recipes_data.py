"""Every shipped recipe and `midalign train` config reads its data, offline: each source it names,
with each language list and split it gives, read from a stand-in that holds exactly the
languages (splits, directions) of the real data set. A recipe that names a language its source
lacks fails here, not hours into a run (recipes/paper_slots.yaml once aligned on hf-tatoeba,
which has no cy, jv, sw or tl); and its header says what it needs: the hub ids and folders read
here, the model, and the compute.

Stand-ins: the recipes' folders (``../shared/data/…``, ``data/…``) laid out around a temp working
directory, a few rows a file; the udhr package as a temp copy; the hub as a stand-in for
``datasets.load_dataset`` that serves the configs and splits a repo has (their layouts are
tests/test_hub_layouts.py's). Each inventory says where it was read. What is read is what a run
reads before its model loads: the task's train and dev data, its test sets through the runner's
own check, the probe's corpus through its checks, and every trained system's alignment pairs; a
train config's task files are made by the `midalign data prepare` commands in its header.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA
from test_hub_layouts import PARALLEL_TATOEBA

from midalign.cache import cache_root
from midalign.cli import main
from midalign.data.hub import _HUB_CONFIG, FLORES_PLUS, PARQUET_EXPORT
from midalign.data.pairs import HF_TATOEBA, load_pairs
from midalign.data.udhr import UDHR_VERSION, read_index
from midalign.errors import InputError
from midalign.evaluation.tasks.slot_readers import MASSIVE_LOCALES
from midalign.experiments.recipe import parse_recipe, system_config
from midalign.experiments.runner import Runner, RunOptions
from midalign.languages import FLORES_NAMES
from midalign.probe.run import run_probe
from midalign.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))

# ../shared/data (its README): the copies the cpu_* recipes and the ablations read
SHARED_SIB200 = (
    "afr_Latn amh_Ethi arb_Arab azj_Latn ben_Beng ces_Latn cym_Latn dan_Latn deu_Latn ell_Grek "
    "eng_Latn fra_Latn heb_Hebr hin_Deva hrv_Latn hun_Latn hye_Armn ind_Latn isl_Latn ita_Latn "
    "jav_Latn jpn_Jpan kan_Knda kat_Geor khk_Cyrl khm_Khmr kor_Hang lvs_Latn por_Latn rus_Cyrl "
    "slk_Latn spa_Latn srp_Cyrl swe_Latn swh_Latn tgl_Latn tha_Thai tur_Latn ukr_Cyrl urd_Arab "
    "zho_Hans"
).split()
SHARED_TATOEBA = "ara cmn cym deu ell hin jav jpn rus spa swh tgl tha tur".split()
# LASER's Tatoeba (data/tatoeba/v1 of facebookresearch/LASER): its 112 file codes, as MTEB's
# Tatoeba task lists them
LASER_TATOEBA = (
    "afr amh ang ara arq arz ast awa aze bel ben ber bos bre bul cat cbk ceb ces cha cmn cor csb "
    "cym dan deu dsb dtp ell epo est eus fao fin fra fry gla gle glg gsw heb hin hrv hsb hun hye "
    "ido ile ina ind isl ita jav jpn kab kat kaz khm kor kur kzj lat lfn lit lvs mal mar max mhr "
    "mkd mon nds nld nno nob nov oci orv pam pes pms pol por ron rus slk slv spa sqi srp swe swg "
    "swh tam tat tel tgl tha tuk tzl uig ukr urd uzb vie war wuu xho yid yue zsm"
).split()
# ALMA's human_written_data: <xx>en for these, a valid file for all but Icelandic, and the WMT22
# test sets (test.<xx>-en.json, test.en-<xx>.json), which ../shared/data's copy leaves out
ALMA = ("cs", "de", "is", "ru", "zh")
# WMT23's general test sets (sacrebleu's wmt23 language pairs)
WMT23 = "cs-uk de-en en-cs en-de en-he en-ja en-ru en-uk en-zh he-en ja-en ru-en uk-en zh-en"
# udhr 6.0.0 (its index.js): the FLoRes-200 languages it has a translation in
UDHR = """
ace_Latn afr_Latn als_Latn amh_Ethi arb_Arab ast_Latn ayr_Latn azb_Arab azj_Latn bam_Latn
ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl
cat_Latn ceb_Latn ces_Latn cjk_Latn crh_Latn cym_Latn dan_Latn deu_Latn dyu_Latn dzo_Tibt
ell_Grek eng_Latn epo_Latn est_Latn eus_Latn ewe_Latn fao_Latn fij_Latn fin_Latn fon_Latn
fra_Latn fur_Latn fuv_Latn gaz_Latn gla_Latn gle_Latn glg_Latn guj_Gujr hat_Latn hau_Latn
heb_Hebr hin_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn
jav_Latn jpn_Jpan kab_Latn kan_Knda kat_Geor kaz_Cyrl kbp_Latn kea_Latn khk_Cyrl khm_Khmr
kin_Latn kir_Cyrl kmb_Latn kmr_Latn knc_Latn kor_Hang lao_Laoo lij_Latn lin_Latn lit_Latn
ltz_Latn lua_Latn lug_Latn lus_Latn lvs_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Latn
mkd_Cyrl mlt_Latn mos_Latn mri_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nso_Latn
nya_Latn oci_Latn pan_Guru pap_Latn pes_Arab plt_Latn pol_Latn por_Latn prs_Arab quy_Latn
ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva shn_Mymr sin_Sinh slk_Latn slv_Latn smo_Latn
sna_Latn som_Latn sot_Latn spa_Latn srp_Cyrl ssw_Latn sun_Latn swe_Latn swh_Latn tam_Taml
tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi tpi_Latn tsn_Latn tso_Latn tuk_Latn
tur_Latn twi_Latn tzm_Tfng uig_Arab ukr_Cyrl umb_Latn urd_Arab uzn_Latn vec_Latn vie_Latn
war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn yue_Hant zho_Hans zho_Hant zul_Latn
""".split()
# aya_collection's templated_uner_llm: UNER v1's treebanks with train, dev and test, as
# (language, script) columns; sr_set is in Latin script, zh_gsd Traditional, zh_gsdsimp
# Simplified (midalign/evaluation/tasks/json_ner.py, tests/test_hub_layouts.py)
AYA_UNER = [
    ("dan", "Latn"), ("eng", "Latn"), ("hrv", "Latn"), ("por", "Latn"), ("slk", "Latn"),
    ("srp", "Latn"), ("swe", "Latn"), ("zho", "Hans"), ("zho", "Hant"),
]  # fmt: skip
# hub id -> (configs, splits) as the readers ask for them: FLORES+ names FLoRes-200's languages
# as its 2.0 renamed them; MASSIVE is read from its Parquet conversion, one folder per locale
HUB = {
    FLORES_PLUS: ({_HUB_CONFIG.get(c, c) for c in FLORES_NAMES}, {"dev", "devtest"}),
    "AmazonScience/massive": (set(MASSIVE_LOCALES), {"train", "validation", "test"}),
    "CohereLabs/aya_collection": ({"templated_uner_llm"}, {"train", "validation", "test"}),
    HF_TATOEBA: ({f"en-{code}" for code in PARALLEL_TATOEBA}, {"train", "dev"}),
}


def lines(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


ROWS = range(1, 7)  # rows a stand-in file holds: more than the probe's k (4) + 1
TOPICS = ("sports", "travel", "health")


def sib200(root: Path, codes: list[str]) -> None:
    for code in codes:
        for split in ("train", "dev", "test"):
            rows = [f"{i}\t{TOPICS[i % 3]}\t{code} {split} {i}." for i in ROWS]
            lines(root / code / f"{split}.tsv", ["index_id\tcategory\ttext", *rows])


def tatoeba(root: Path, codes: list[str]) -> None:
    for code in codes:
        lines(root / f"tatoeba.{code}-eng.{code}", [f"{code} {i}." for i in ROWS])
        lines(root / f"tatoeba.{code}-eng.eng", [f"English {i}." for i in ROWS])


def alma(root: Path, with_test: bool) -> None:
    for xx in ALMA:
        folder = root / f"{xx}en"
        lines(folder / f"train.{xx}-en.{xx}", [f"{xx} {i}." for i in ROWS])
        lines(folder / f"train.{xx}-en.en", [f"English {i}." for i in ROWS])
        pairs = [json.dumps({"translation": {xx: f"{xx} {i}.", "en": f"En {i}."}}) for i in ROWS]
        names = [f"test.{xx}-en.json", f"test.en-{xx}.json"] if with_test else []
        for name in names + ([f"valid.{xx}-en.json"] if xx != "is" else []):
            (folder / name).write_text(f"[{', '.join(pairs)}]", encoding="utf-8")


def wmt23(root: Path) -> None:
    for pair in WMT23.split():
        s, t = pair.split("-")
        lines(root / f"generaltest2023.{pair}.src.{s}", [f"{s} {i}." for i in ROWS])
        lines(root / f"generaltest2023.{pair}.ref.refA.{t}", [f"{t} {i}." for i in ROWS])


def udhr(root: Path) -> None:
    entries = [
        f"{{bcp47: '{c[:3]}-{c[4:]}', code: '{c.lower()}', iso6393: '{c[:3]}', name: '{c}', "
        "stage: 4}"
        for c in UDHR
    ]
    lines(root / "index.js", ["export const udhr = [", ",\n".join(entries), "]"])
    for c in UDHR:
        articles = [f'<article data-number="{n}"><p>{c} {n}.</p></article>' for n in range(1, 31)]
        body = f"<header><p>{c} preamble.</p></header>{''.join(articles)}"
        lines(root / "declaration" / f"{c.lower()}.html", [f"<html><body>{body}</body></html>"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``work/main``, the working directory a recipe runs in, with ``data/`` (the paper
    recipes' full copies) and ``../shared/data`` (the subsets the cpu recipes read) beside it;
    ``udhr/`` holds the package."""
    root = tmp_path_factory.mktemp("world")
    main_dir, shared = root / "work" / "main", root / "work" / "shared" / "data"
    sib200(shared / "sib200", SHARED_SIB200)
    tatoeba(shared / "tatoeba", SHARED_TATOEBA)
    alma(shared / "alma", with_test=False)
    wmt23(shared / "wmt23")
    tatoeba(main_dir / "data" / "tatoeba", LASER_TATOEBA)
    alma(main_dir / "data" / "alma", with_test=True)
    wmt23(main_dir / "data" / "wmt23")
    udhr(root / "udhr")
    return root


def _hub_rows(repo: str, config: str, split: str) -> list[dict]:
    if repo == FLORES_PLUS:
        return [{"id": i, "text": f"{config} {split} {i}."} for i in ROWS]
    if repo == HF_TATOEBA:
        return [{"english": f"I sing {i}.", "non_english": f"{config} {i}."} for i in ROWS]
    if repo == "AmazonScience/massive":
        part = {"validation": "dev"}.get(split, split)
        return [
            {"id": str(i), "locale": config, "partition": part, "utt": f"wake me at five {i}",
             "annot_utt": f"wake me at [time : five] {i}"}
            for i in ROWS
        ]  # fmt: skip
    question = "Considering the input sentence below, what is the output result?"
    return [
        {"id": n, "inputs": f"{question}\n{language} {script} {n}.", "language": language,
         "script": script, "targets": json.dumps({"Results": []})}
        for n, (language, script) in enumerate(AYA_UNER, 1)
    ]  # fmt: skip


@pytest.fixture
def offline(world: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Recipes run in ``world``, the hub answers from :data:`HUB` (no model is loaded): the hub
    ids asked for are listed in the returned list."""
    import datasets

    real_load, real_configs = datasets.load_dataset, datasets.get_dataset_config_names
    asked: list[str] = []

    def load_dataset(path: str, *args, name=None, data_dir=None, split=None, revision=None, **kw):
        if path not in HUB:
            return real_load(path, *args, name=name, data_dir=data_dir, split=split, **kw)
        asked.append(path)
        configs, splits = HUB[path]
        config = name or data_dir
        exported = path == "AmazonScience/massive"  # a loading script: its Parquet conversion
        if revision != (PARQUET_EXPORT if exported else None):
            raise ValueError(f"{path}: revision {revision} is not the one its data is in")
        if config not in configs:
            raise ValueError(f"BuilderConfig '{config}' not found. Available: {sorted(configs)}")
        if split not in splits:
            raise ValueError(f"Unknown split {split!r}. Should be one of {sorted(splits)}.")
        return datasets.Dataset.from_list(_hub_rows(path, config, split))

    def config_names(path: str, *args, **kwargs) -> list[str]:
        return sorted(HUB[path][0]) if path in HUB else real_configs(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", config_names)
    monkeypatch.setattr("midalign.data.hub.hub_offline", lambda: False)
    monkeypatch.setattr("midalign.data.hub.hub_unreachable", lambda: None)
    monkeypatch.setattr("midalign.data.udhr.fetch_package", lambda: world / "udhr")
    monkeypatch.setattr("midalign.probe.run.load_model", _no_model)
    monkeypatch.chdir(world / "work" / "main")
    return asked


class ModelReached(Exception):
    """The probe got past its data checks to the model: its data is fine."""


def _no_model(*args, **kwargs):
    raise ModelReached


def read_recipe(values: dict, name: str, out: Path) -> list[str]:
    """Read every data set ``values`` (a recipe) names as its run would, before any model: the
    sources read (``format:path`` or hub ids)."""
    recipe = parse_recipe(values, name)
    runner = Runner(recipe, RunOptions(out=out, progress=False, dry_run=True))
    t = recipe.task
    sources = [s.source for s in (t.train, t.dev, *t.test) if s is not None]
    for spec in (t.train, t.dev):
        if spec is not None:
            assert runner.task.read(spec.source, spec.langs, spec.split, spec.limit)
    assert runner.test_examples()  # the check a run makes before its first step
    if recipe.probe is not None:
        p = runner.probe_settings()
        sources.append(p["data"])
        with pytest.raises(ModelReached):
            run_probe(
                recipe.model, None, p["data"], ",".join(p["langs"]), split=p.get("split", "dev"),
                max_sentences=p.get("max_sentences"), k=int(p.get("k", 4)), option="probe.",
            )  # fmt: skip
    for system in recipe.systems:
        if system.kind == "train":
            c = system_config(recipe, system, recipe.seeds[0], "task.jsonl", "dev.jsonl")
            sources.append(read_pairs(c.data))
    return [s for s in sources if s]


def read_pairs(data) -> str | None:
    """The alignment pairs of a train config's ``data`` section, read as training reads them
    (midalign/training/align_setup.py); the source, or None without alignment data."""
    if not (data.align_data and data.align_langs):
        return None
    pairs = load_pairs(
        data.align_data, data.align_langs, data.align_split, data.align_max_pairs, data.align_pivot
    )
    assert pairs and all(len(p) >= 2 for p in pairs.values()), {k: len(p) for k, p in pairs.items()}
    return data.align_data


def prepare_commands(header: str) -> list[list[str]]:
    """The `midalign data prepare` commands a config's header gives (``\\`` continues a line)."""
    text = re.sub(r"\\\n#\s*", " ", header)
    commands = [line.lstrip("# ") for line in text.splitlines()]
    return [shlex.split(c)[1:] for c in commands if c.startswith("midalign data prepare ")]


def header_of(path: Path) -> str:
    """The comment lines a file starts with."""
    head = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        head.append(line)
    return "\n".join(head)


def needs_and_compute(header: str) -> tuple[str, str]:
    """What the header's ``# Needs:`` and ``# Compute:`` say: each starts a line and may wrap,
    Needs up to Compute, Compute up to the first line that ends in a full stop."""
    match = re.search(r"^# Needs: (.*?)\n# Compute: (.*?\.)$", header, re.DOTALL | re.MULTILINE)
    assert match, f"no '# Needs: …' followed by '# Compute: ….' in the header:\n{header}"
    return tuple(" ".join(re.sub(r"^#\s*", "", g, flags=re.M).split()) for g in match.groups())


def check_header(path: Path, model: str, sources: list[str], hub_ids: list[str]) -> None:
    """The header names every hub id and folder read, and the model unless it is the default;
    it says "offline" exactly when nothing comes from the hub; its compute is CPU or GPU time."""
    needs, compute = needs_and_compute(header_of(path))
    online = bool(hub_ids) or model != "default"
    wanted = set(hub_ids) | ({model} if model != "default" else set())
    for source in sources:
        _, sep, arg = source.partition(":")
        if source.startswith("udhr"):
            wanted.add("udhr")
        elif sep and Path(arg).exists():  # ../shared/data/sib200 -> ../shared/data
            parent = str(Path(arg).parent)
            wanted.add(parent if parent.count("/") >= 2 else arg)
    missing = sorted(w for w in wanted if w not in needs)
    assert not missing, f"{path.name}: 'Needs:' does not name {missing}: {needs}"
    assert ("offline" in needs) != online, f"{path.name}: offline or not? {needs}"
    assert re.search(r"\b(CPU|GPU)\b", compute), compute
    if online:
        assert "estimate" in compute, f"{path.name}: an unmeasured GPU figure says so: {compute}"


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_shipped_recipe_reads_its_data(path: Path, offline: list[str], tmp_path: Path):
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    if path.parent.name == "train":  # a `midalign train` config: task files from its header
        for argv in prepare_commands(header_of(path)):
            assert main(argv) == 0, argv
        config = load_config(path)
        for task_file in (config.data.task_data, config.data.dev_data):
            assert task_file is None or Path(task_file).is_file(), task_file
        sources = [s for s in (read_pairs(config.data),) if s]
        sources += [argv[argv.index("--source") + 1] for argv in prepare_commands(header_of(path))]
        model = config.model.name
    else:
        sources = read_recipe(values, str(path), tmp_path / "run")
        model = values["model"]
    check_header(path, model, sources, sorted(set(offline)))


def _recipe(name: str) -> dict:
    return yaml.safe_load((REPO / "recipes" / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (  # the bug this test exists for: hf-tatoeba has none of the paper's cy, jv, sw, tl
            "paper_slots.yaml",
            lambda r: r["train"]["data"].update(align_data="hf-tatoeba"),
            "config en-cy split train: cannot load",
        ),
        (  # ../shared/data's SIB-200 has 41 languages; the probe asks for a 42nd
            "cpu_topic.yaml",
            lambda r: r["probe"]["langs"].append("fin"),
            "fin_Latn",
        ),
        (  # ALMA has no Icelandic valid file
            "paper_mt.yaml",
            lambda r: r["task"]["dev"]["langs"].append("is"),
            "ALMA has no valid file for Icelandic",
        ),
        (  # ../shared/data's ALMA copy has no test sets
            "cpu_mt.yaml",
            lambda r: r["task"]["test"].update(source="alma:../shared/data/alma"),
            "split test: no",
        ),
        (  # UNER's Serbian is in Latin script; a bare sr is srp_Cyrl
            "paper_ner.yaml",
            lambda r: r["task"].update(test={**r["task"]["test"], "langs": ["sr"]}, groups={}),
            "no srp_Cyrl rows, but srp_Latn",
        ),
    ],
    ids=["hf-tatoeba cy", "sib200 fin", "alma is valid", "alma test", "aya sr"],
)
def test_a_language_its_source_lacks_fails(name, change, message, offline, tmp_path):
    values = _recipe(name)
    change(values)
    with pytest.raises(InputError, match=re.escape(message)):
        read_recipe(values, name, tmp_path / "run")


def test_a_header_that_leaves_out_what_is_read_fails(tmp_path: Path, offline) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "# A recipe.\n# Needs: offline: ../shared/data (SIB-200).\n# Compute: a CPU minute.\n"
    )
    check_header(path, "default", ["sib200:../shared/data/sib200"], [])  # in the world's cwd
    with pytest.raises(AssertionError, match=r"does not name \['data/alma'\]"):
        check_header(path, "default", ["alma:data/alma"], [])
    with pytest.raises(AssertionError, match=r"does not name \['org/model'\]"):
        check_header(path, "org/model", [], [])
    path.write_text(f"# Needs: offline: {FLORES_PLUS}.\n# Compute: an estimate of 1 GPU hour.\n")
    with pytest.raises(AssertionError, match="offline or not"):
        check_header(path, "default", [], [FLORES_PLUS])


def test_the_stand_ins_hold_what_the_shared_data_holds() -> None:
    """Where ../shared/data is on this machine, the stand-ins' inventories are its own."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not on this machine")
    assert sorted(p.name for p in (SHARED_DATA / "sib200").iterdir()) == SHARED_SIB200
    codes = {p.name.split(".")[1].split("-")[0] for p in (SHARED_DATA / "tatoeba").iterdir()}
    assert sorted(codes) == SHARED_TATOEBA
    assert sorted(p.name[:2] for p in (SHARED_DATA / "alma").iterdir()) == list(ALMA)
    assert {p.name for p in (SHARED_DATA / "alma").rglob("*.json")} == {  # no test sets
        f"valid.{xx}-en.json" for xx in ALMA if xx != "is"
    }
    pairs = {p.name.split(".")[1] for p in (SHARED_DATA / "wmt23").glob("generaltest2023.*")}
    assert sorted(pairs) == WMT23.split()


def test_the_udhr_stand_in_holds_what_the_package_holds() -> None:
    """Where udhr 6.0.0 is in the cache, the stand-in's languages are its FLoRes-200 ones."""
    package = Path(cache_root()[0], "udhr", UDHR_VERSION)
    if not (package / "index.js").is_file():
        pytest.skip(f"udhr {UDHR_VERSION} is not in the cache")
    have = {t.flores for t in read_index(package)}
    assert sorted(have & set(FLORES_NAMES)) == UDHR
