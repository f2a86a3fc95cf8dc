"""Task data (instruction jsonl) and alignment pairs for `midalign train`."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import tiny_model, tiny_tokenizer
from scipy.stats import chisquare

from midalign.data.instructions import TaskDataset, load_task_dataset, read_instructions
from midalign.data.pairs import (
    AlignStream,
    encode_pairs,
    is_one_sentence,
    load_pairs,
    split_dev,
)
from midalign.errors import InputError
from midalign.modeling.prompting import IGNORE_INDEX, encode_prompt
from midalign.training.align_setup import pairs_setup
from midalign.training.config import AlignConfig


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reads_prompt_rows_and_chat_rows(tmp_path):
    path = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"prompt": "a b", "response": "c", "lang": "en", "id": 7},
            {
                "messages": [
                    {"role": "system", "content": "the"},
                    {"role": "user", "content": "d"},
                    {"role": "assistant", "content": "e"},
                ]
            },
        ],
    )
    first, second = read_instructions(path)
    assert (first.prompt, first.response, first.system, first.lang, first.id) == (
        "a b",
        "c",
        None,
        "en",
        "7",
    )
    assert (second.system, second.prompt, second.response, second.id) == (
        "the",
        "d",
        "e",
        "t.jsonl:2",
    )


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "a"}, r"t.jsonl:2: missing field 'response'"),
        ({"response": "a"}, r"t.jsonl:2: missing field 'prompt'"),
        ({"prompt": "a", "response": 3}, r"t.jsonl:2: field 'response' must be a string"),
        ({"prompt": "a", "response": "  "}, r"t.jsonl:2: empty response"),
        ({"messages": [{"role": "user", "content": "a"}]}, r"t.jsonl:2: messages must be"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b"}, row])
    with pytest.raises(InputError, match=message):
        read_instructions(path)


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": oops}\n')
    with pytest.raises(InputError, match=r"t.jsonl:3: not valid JSON"):
        read_instructions(path)


def test_loss_only_on_response_tokens(tmp_path):
    tok = tiny_tokenizer()
    path = _jsonl(tmp_path / "t.jsonl", [{"system": "the", "prompt": "a b", "response": "c d"}])
    item = load_task_dataset(path, tok, max_length=64)[0]
    prompt = encode_prompt(tok, "a b", system="the")
    c, d = tok.convert_tokens_to_ids(["c", "d"])
    # by hand: the prompt ids, then "c", "d", EOS; labels -100 exactly on the prompt
    assert item["input_ids"] == prompt + [c, d, tok.eos_token_id]
    assert item["labels"] == [IGNORE_INDEX] * len(prompt) + [c, d, tok.eos_token_id]


def test_truncation_is_counted_and_never_drops_everything_silently(tmp_path, caplog):
    tok = tiny_tokenizer()
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "a " * 30, "response": "b c"}]
    examples = read_instructions(_jsonl(tmp_path / "t.jsonl", rows))
    short = len(encode_prompt(tok, "a")) + 2
    data = TaskDataset(examples, tok, max_length=short, source="t.jsonl")
    # the second prompt alone is longer than the limit: cut, nothing of the answer left, dropped
    assert (data.truncated, data.dropped, len(data)) == (1, 1, 1)
    assert "1 of 2 examples longer than max_length" in caplog.text
    with pytest.raises(InputError, match="every example's prompt is longer than max_length 3"):
        TaskDataset(examples[1:], tok, max_length=3, source="t.jsonl")


def test_one_sentence_filter():
    assert is_one_sentence("Hello world.")
    assert is_one_sentence("Is it 3.5 km?")
    assert is_one_sentence("« Bonjour. »")
    assert not is_one_sentence("   ")
    assert not is_one_sentence("Hello. How are you?")
    assert not is_one_sentence("你好。你好吗？")
    assert not is_one_sentence('He said "no." Then he left.')
    assert not is_one_sentence("\u200b")
    assert not is_one_sentence("Room 5. Then we left.")
    # a lowercase letter after the mark, or a title or an initial before a period: one sentence
    assert is_one_sentence("Dr. Miller works at the hospital.")
    assert is_one_sentence('He said "Good morning!" and left.')
    assert is_one_sentence("J. K. Rowling wrote it in the U.S. first.")
    assert is_one_sentence("Obst, z. B. Äpfel, ist gesund.")
    assert is_one_sentence("Mme. Dupont est là.")


def _tatoeba(root, langs, n, bad=0):
    """LASER-format files; the first ``bad`` pairs of each language have two sentences."""
    root.mkdir(exist_ok=True)
    for lang in langs:
        xs = [f"{lang} sentence {i}." for i in range(n)]
        ys = [f"english sentence {i}." for i in range(n)]
        for i in range(bad):
            xs[i] = f"{lang.title()} one. {lang.title()} two."
        (root / f"tatoeba.{lang}-eng.{lang}").write_text("\n".join(xs) + "\n")
        (root / f"tatoeba.{lang}-eng.eng").write_text("\n".join(ys) + "\n")
    return root


def test_load_pairs_filters_and_keys_by_language(tmp_path):
    root = _tatoeba(tmp_path / "tat", ["deu", "jav"], n=6, bad=2)
    pairs = load_pairs(f"tatoeba:{root}", ["de", "jav"])
    assert list(pairs) == ["deu_Latn", "jav_Latn"]
    assert pairs["deu_Latn"][0] == ("deu sentence 2.", "english sentence 2.")
    assert len(pairs["jav_Latn"]) == 4


def test_multiway_data_pairs_with_english():
    pairs = load_pairs(
        "parallel:tests/fixtures/data/plain/greetings.de,tests/fixtures/data/plain/greetings.en",
        ["de"],
    )
    assert pairs["deu_Latn"][:2] == [
        ("Hallo Welt.", "Hello world."),
        ("Gute Nacht.", "Good night."),
    ]


def test_dropped_pairs_are_named_by_file_and_line(tmp_path, caplog):
    root = _tatoeba(tmp_path / "tat", ["deu"], n=9, bad=7)
    pairs = load_pairs(f"tatoeba:{root}", ["deu"])
    assert len(pairs["deu_Latn"]) == 2
    lines = ", ".join(f"{root}/tatoeba.deu-eng.deu:{i}" for i in range(1, 6))
    assert caplog.messages == [
        f"deu_Latn: dropped 7 of 9 pairs (empty or several sentences): {lines}, … (7 in all)"
    ]


def test_parallel_alignment_files_by_suffix_or_with_english_last(tmp_path):
    de, en = tmp_path / "t.de", tmp_path / "t.en"
    de.write_text("Hallo Welt.\nGute Nacht.\n")
    en.write_text("Hello world.\nGood night.\n")
    expected = {"deu_Latn": [("Hallo Welt.", "Hello world."), ("Gute Nacht.", "Good night.")]}
    assert load_pairs(f"parallel:{en},{de}", ["de"]) == expected
    assert load_pairs(f"parallel:{de},{en}", ["de"]) == expected
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"
    x.write_text(de.read_text())
    y.write_text(en.read_text())
    assert load_pairs(f"parallel:{x},{y}", ["de"]) == expected  # English last


def test_sentences_over_the_length_limit_are_named(tmp_path, caplog):
    de, en = tmp_path / "t.de", tmp_path / "t.en"
    de.write_text("der mensch ist frei\ndas recht\nein recht\n")
    en.write_text("the law\nthe law is the law of all people\nall is equal\n")
    tok = tiny_tokenizer()
    pairs = load_pairs(f"parallel:{de},{en}", ["de"], tokenizer=tok, max_length=5)
    assert len(pairs["deu_Latn"]) == 3  # kept: encode_pairs cuts them
    # <bos> + 8 words over the limit; "der mensch ist frei", <bos> + 4 words, at it
    assert caplog.messages == [
        "deu_Latn: 1 of 3 pairs have a sentence over --align-max-length 5 tokens, cut at the end: "
        f"{en}:2 (9 tokens)"
    ]
    caplog.clear()
    load_pairs(f"parallel:{de},{en}", ["de"], tokenizer=tok, max_length=9)
    assert caplog.messages == []


def test_pairs_handed_to_a_trainer_over_the_length_limit_are_named(tmp_path, caplog):
    """The same warning for pairs a trainer is handed in memory (AlignmentTrainer,
    AlignmentSFTTrainer): each sentence named by its group and place, the limit by the
    trainer's argument, for the training and the held-out pairs alike."""
    from transformers import TrainingArguments

    rows = [
        {"x": "der mensch ist frei", "y": "the law", "lang": "de"},
        {"x": "das recht", "y": "the law is the law of all people", "lang": "de"},
        {"x": "ein recht", "y": "all is equal", "lang": "de"},
    ]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    align = AlignConfig(layers="1", batch_pairs=2)
    pairs_setup(align, tiny_model("llama"), tiny_tokenizer(), rows, rows[1:], args, 5)
    assert [m for m in caplog.messages if "tokens" in m] == [
        "de: 1 of 3 pairs have a sentence over align_max_length 5 tokens, cut at the end: "
        "align_pairs['de'][1] (y) (9 tokens)",
        "de: 1 of 2 pairs have a sentence over align_max_length 5 tokens, cut at the end: "
        "align_eval_pairs['de'][0] (y) (9 tokens)",
    ]


def test_language_without_usable_pairs_is_an_error(tmp_path):
    root = _tatoeba(tmp_path / "tat", ["deu"], n=3)
    _tatoeba(root, ["cym"], n=3, bad=2)
    with pytest.raises(InputError, match=r"--align-langs: cym_Latn has 1 usable pair"):
        load_pairs(f"tatoeba:{root}", ["deu", "cym"])
    with pytest.raises(InputError, match="English is the pivot"):
        load_pairs(f"tatoeba:{root}", ["deu", "eng"])
    with pytest.raises(InputError, match="swh"):
        load_pairs(f"tatoeba:{root}", ["swh"])


def test_stream_draws_languages_uniformly_and_is_stateless():
    # Very unequal sizes: sampling by language, not by pair, must still be uniform.
    sizes = {"a": 400, "b": 20, "c": 5, "d": 60}
    pairs = {lang: [(f"{lang}{i}", f"e{i}") for i in range(n)] for lang, n in sizes.items()}
    stream = AlignStream(pairs, batch_pairs=8, seed=3)
    counts = Counter(stream.batch(k)[0] for k in range(4000))
    # 4 equally likely languages: chi-square goodness of fit, 3 degrees of freedom
    assert chisquare([counts[lang] for lang in sizes]).pvalue > 0.01
    for k in (0, 17, 3999):
        lang, batch = stream.batch(k)
        assert len(batch) == min(8, sizes[lang]) == len(set(batch))
        assert all(x.startswith(lang) for x, _ in batch)
        # a fresh stream (e.g. after resume) gives the same micro-batch k
        assert AlignStream(pairs, 8, 3).batch(k) == (lang, batch)
    assert AlignStream(pairs, 8, 4).batch(0) != AlignStream(pairs, 8, 3).batch(0)


def test_ranks_split_the_one_process_micro_batch():
    """Two ranks with B pairs each hold the two halves of one process's 2B-pair micro-batch."""
    sizes = {"a": 40, "b": 7}
    pairs = {lang: [(f"{lang}{i}", f"e{i}") for i in range(n)] for lang, n in sizes.items()}
    one = AlignStream(pairs, batch_pairs=8, seed=5)
    ranks = [AlignStream(pairs, batch_pairs=4, seed=5, rank=r, world=2) for r in (0, 1)]
    seen = set()
    for k in range(40):
        lang, whole = one.batch(k)
        (lang0, half0), (lang1, half1) = (s.batch(k) for s in ranks)
        assert lang0 == lang1 == lang
        seen.add(lang)
        if lang == "a":
            assert half0 + half1 == whole and len(half0) == 4
        else:  # 7 pairs: 3 per rank, equal slices (gathered tensors must have one shape)
            assert len(half0) == len(half1) == 3 and not set(half0) & set(half1)
    assert seen == {"a", "b"}
    with pytest.raises(InputError, match="too few alignment pairs for 4"):
        AlignStream({"c": [("c0", "e0"), ("c1", "e1"), ("c2", "e2")]}, 2, 0, rank=0, world=4)


def test_dev_split_is_fixed_and_disjoint():
    pairs = {"a": [(f"a{i}", f"e{i}") for i in range(50)], "b": [("b0", "e0"), ("b1", "e1")]}
    train, dev = split_dev(pairs, per_lang=8, seed=0)
    assert len(dev["a"]) == 8 and len(train["a"]) == 42
    assert not set(dev["a"]) & set(train["a"])
    assert "b" not in dev and train["b"] == pairs["b"]  # too few to hold any out
    assert split_dev(pairs, 8, 0) == (train, dev)


def test_encode_pairs_puts_x_rows_first():
    tok = tiny_tokenizer()
    batch = encode_pairs(tok, [("der", "the"), ("die das", "a")], max_length=16)
    ids = batch["input_ids"]
    assert ids.shape == (4, 3)  # BOS + at most 2 words
    words = [
        tok.convert_ids_to_tokens(row[m.bool()].tolist())
        for row, m in zip(ids, batch["attention_mask"], strict=True)
    ]
    assert words == [["<bos>", "der"], ["<bos>", "die", "das"], ["<bos>", "the"], ["<bos>", "a"]]


@pytest.mark.parametrize(
    ("n", "batch", "accumulation", "world"),
    [(10, 2, 2, 1), (9, 2, 2, 2), (13, 2, 3, 2), (8, 1, 2, 4)],
)
def test_alternating_steps_deal_whole_steps_to_every_rank(n, batch, accumulation, world):
    """What each rank's loader yields under accelerate's round-robin dealing of batches
    (BatchSamplerShard): chunks of G batches that are all alignment markers or all task batches,
    alignment first, in the same order on every rank; every task example at least once; ranks
    padded with the epoch's first task examples, never with markers."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from midalign.data.steps import AlternatingSteps

    sampler = AlternatingSteps(range(n), n, batch, accumulation, world)
    whole = list(BatchSampler(sampler, batch, drop_last=False))
    assert len(list(sampler)) == len(sampler)
    per_rank = []
    for rank in range(world):
        shard = BatchSamplerShard(BatchSampler(sampler, batch, False), world, rank)
        batches = list(shard) if world > 1 else whole
        assert len(batches) == len(shard)
        assert all(all(i == n for i in b) or n not in b for b in batches)  # never mixed
        kinds = ["A" if b[0] == n else "T" for b in batches]
        chunks = [kinds[i : i + accumulation] for i in range(0, len(kinds), accumulation)]
        assert all(len(set(c)) == 1 for c in chunks)
        assert [c[0] for c in chunks] == ["A", "T"] * (len(chunks) // 2)
        assert all(len(c) == accumulation for c in chunks[:-1])
        per_rank.append((kinds, [i for b in batches for i in b if i != n]))
    assert len({tuple(kinds) for kinds, _ in per_rank}) == 1
    seen = Counter(i for _, task in per_rank for i in task)
    assert set(seen) == set(range(n))
    padding = sum(seen.values()) - n
    assert padding < world * batch and all(seen[i] == 2 for i in range(padding))
