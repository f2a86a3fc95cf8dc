"""Likelihood scoring (midalign.evaluation.loglik, `eval --scoring loglik`): each label's
log-probability after the prompt, computed with the prompt once and logits only at label positions,
equals a full forward's log-softmax over prompt + label, on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import (
    ROUTE_DTYPES,
    assert_same_numbers,
    precision,
    tiny_model,
    tiny_model_or_sliding,
)
from transformers import PreTrainedTokenizerFast

from midalign.cli import main
from midalign.evaluation.loglik import label_ids, label_logprobs, shared_start
from midalign.evaluation.run import evaluate
from midalign.evaluation.tasks import get_task
from midalign.evaluation.tasks.base import Example
from midalign.evaluation.tasks.topic import LABELS
from midalign.modeling.prompting import encode_example, encode_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"

# prompts of 3, 5, 9 and 2 tokens; labels of 1 to 4 tokens, a different number per prompt
PROMPTS = [[1, 5, 6], [1, 7, 8, 9, 10], [1, 11, 12, 13, 14, 15, 16, 17, 18], [1, 19]]
LABEL_IDS = [
    [[20], [21, 22], [23, 24, 25]],
    [[30, 31], [32]],
    [[40, 41, 42, 43], [44], [45, 46]],
    [[50], [51]],
]
# the same prompts after a shared instruction of 6 tokens (computed once, its cache copied)
INSTRUCTION = [1, 60, 61, 62, 63, 64]
SHARED = [INSTRUCTION + p[1:] for p in PROMPTS]


def _model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    return tiny_model_or_sliding(family, dtype)


def _full_forward(model, prompts, labels) -> torch.Tensor:
    """The reference: one unpadded forward of prompt + label per label, every position's
    logits, log-softmax, the label tokens' values summed."""
    values = []
    with torch.no_grad():
        for prompt, choices in zip(prompts, labels, strict=True):
            for label in choices:
                logits = model(torch.tensor([prompt + label])).logits[0].double()
                logp = logits.log_softmax(-1)
                values.append(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(label)))
    return torch.stack(values)


@ROUTE_DTYPES
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3", "gemma3-sliding"])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("prompts", [PROMPTS, SHARED], ids=["distinct", "shared-start"])
def test_label_logprobs_equal_a_full_forward(family, dtype, batch_size, prompts) -> None:
    model = _model(family, dtype)
    got = label_logprobs(model, prompts, LABEL_IDS, batch_size=batch_size, progress=False)
    assert [len(row) for row in got] == [len(row) for row in LABEL_IDS]
    flat = torch.tensor([v for row in got for v in row], dtype=torch.float64)
    expected = _full_forward(model, prompts, LABEL_IDS)
    assert_same_numbers(flat, expected, precision(family.split("-")[0], dtype))


def test_shared_start_is_the_common_prefix_unless_a_window_is_shorter() -> None:
    longest = max(map(len, SHARED)) + 4
    assert shared_start(SHARED, _model("llama", torch.float32), longest) == len(INSTRUCTION)
    assert shared_start(PROMPTS, _model("llama", torch.float32), 12) == 0  # only BOS shared
    # no prompt is all prefix: the last shared token stays with the shortest prompt
    assert shared_start([[1, 2, 3], [1, 2, 3, 4]], _model("llama", torch.float32), 8) == 2
    assert shared_start(SHARED[:1], _model("llama", torch.float32), longest) == 0
    # a 4-token window: padding after the prefix would narrow it
    assert shared_start(SHARED, _model("gemma3-sliding", torch.float32), longest) == 0


def test_label_logprobs_computes_logits_only_at_label_positions(monkeypatch) -> None:
    """The vocabulary projection sees one row per prompt (its last position) plus one per
    label token after a label's first: never the whole prompt."""
    import midalign.evaluation.loglik

    rows = []
    real = midalign.evaluation.loglik.output_logits

    def counting(model, hidden):
        rows.append(hidden.shape[0])
        return real(model, hidden)

    monkeypatch.setattr(midalign.evaluation.loglik, "output_logits", counting)
    label_logprobs(tiny_model("llama"), SHARED, LABEL_IDS, batch_size=4, progress=False)
    later_tokens = sum(len(label) - 1 for choices in LABEL_IDS for label in choices)
    assert rows == [len(PROMPTS), later_tokens]


def _word_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the topic labels and a few words (deterministic;
    its alphabet only the characters they and the prompts use), so that " travel" (after a
    space) and "travel" are different tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = [*LABELS, "the", "team", "won", "take", "night", "train", "User", "Assistant", "topic"]
    corpus = [" ".join(words), *words, *(f" {w}" for w in words)] * 3
    trainer = trainers.BpeTrainer(
        vocab_size=120,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.chat_template = chat_template
    assert len(fast) <= 128  # the tiny models' vocabulary
    return fast


# The answer turn puts a space before the answer: the model is trained on " travel", not "travel"
SPACED_TEMPLATE = (
    "<bos>{% for m in messages %}{{ m.role }}:{% if m.role == 'assistant' %} {% endif %}"
    "{{ m.content }}<eos>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_label_tokens_are_those_training_answers_with() -> None:
    tok = _word_tokenizer(SPACED_TEMPLATE)
    ids = label_ids(tok, "the team won", "travel")
    spaced = tok(" travel", add_special_tokens=False)["input_ids"]
    assert ids == spaced != tok("travel", add_special_tokens=False)["input_ids"]
    full, _ = encode_example(tok, "the team won", "travel")
    assert full == encode_prompt(tok, "the team won") + ids + [tok.eos_token_id]
    # the plain template (no chat template) trains on the label alone, then EOS (not scored)
    plain = _word_tokenizer()
    assert (
        label_ids(plain, "the team won", "science/technology", "topic")
        == plain("science/technology", add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize("template", [None, SPACED_TEMPLATE], ids=["plain", "chat"])
def test_evaluate_loglik_scores_every_label_and_picks_the_best(template) -> None:
    tok = _word_tokenizer(template)
    model = tiny_model("gemma3", n_layers=2, dtype=torch.float64)
    task = get_task("topic")
    texts = ["the team won", "take the night train", "the topic", "won"]
    refs = ["sports", "travel", "geography", "health"]
    examples = [
        Example(str(i), "eng_Latn", "eng_Latn", text, ref)
        for i, (text, ref) in enumerate(zip(texts, refs, strict=True))
    ]
    results = evaluate(model, tok, task, examples, batch_size=3, scoring="loglik", progress=False)
    assert results["scoring"] == "loglik"
    predictions = results["predictions"]
    expected = []
    for ex, p in zip(examples, predictions, strict=True):
        system, prompt = task.instruction(ex)
        prompt_ids = encode_prompt(tok, prompt, system)
        labels = [label_ids(tok, prompt, label, system) for label in LABELS]
        expected.append(_full_forward(model, [prompt_ids], [labels]))
        assert list(p["loglik"]) == list(LABELS)
        scores = p["loglik"]
        assert p["output"] == p["parsed"] == max(LABELS, key=scores.get) and p["ok"]
    got = torch.tensor([v for p in predictions for v in p["loglik"].values()], dtype=torch.float64)
    assert_same_numbers(got, torch.cat(expected), torch.float32)  # Gemma 3 norms in float32
    scores = results["per_language"]["eng_Latn"]
    correct = [p["parsed"] == ex.reference for p, ex in zip(predictions, examples, strict=True)]
    assert scores["accuracy"] == sum(correct) / len(correct)
    per_char = [max(LABELS, key=lambda k, p=p: p["loglik"][k] / len(k)) for p in predictions]
    norm = [pick == ex.reference for pick, ex in zip(per_char, examples, strict=True)]
    assert scores["accuracy_norm"] == sum(norm) / len(norm)
    assert scores["unparseable"] == 0 and results["unparseable"] == 0


def test_eval_scoring_loglik_refuses_open_tasks_and_unspellable_labels(
    tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "eval"
    wmt = f"wmt23:{FIXTURES / 'wmt23'}"
    argv = ["eval", "--model", str(tiny_model_dir), "--scoring", "loglik", "--out", str(out)]
    assert main([*argv, "--task", "mt", "--data", wmt, "--langs", "en-ja"]) == 2
    assert capsys.readouterr().err.endswith(
        "midalign eval: error: --scoring loglik: the mt task has no closed set of answers to "
        "score (loglik scores classification: topic); use --scoring generate\n"
    )
    # the tiny word-level tokenizer has no tokens for the topic labels (all <unk>)
    sib = f"sib200:{FIXTURES / 'sib200'}"
    assert main([*argv, "--task", "topic", "--data", sib, "--langs", "de"]) == 2
    err = capsys.readouterr().err
    assert "error: label 'science/technology' is not spelled by its tokens" in err
    assert not out.exists()


def test_eval_cli_loglik_writes_label_scores(tmp_path) -> None:
    model_dir = tmp_path / "model"
    tiny_model("gemma3", n_layers=2).save_pretrained(model_dir)
    _word_tokenizer().save_pretrained(model_dir)
    data = tmp_path / "sib"
    (data / "eng_Latn").mkdir(parents=True)
    rows = ["index_id\tcategory\ttext", "1\tsports\tthe team won", "2\ttravel\ttake the train"]
    (data / "eng_Latn" / "test.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(model_dir), "--task", "topic", "--data", f"sib200:{data}"]
    assert main([*argv, "--langs", "en", "--scoring", "loglik", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["scoring"] == results["config"]["scoring"] == "loglik"
    assert results["compile"] == {
        "mode": "off",
        "on": False,
        "reason": "off as requested",
        "eager_seconds": None,
        "compiled_seconds": None,
        "compile_seconds": None,
    }
    assert set(results["per_language"]["eng_Latn"]) >= {"accuracy", "accuracy_norm", "macro_f1"}
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [sorted(p["loglik"]) for p in lines] == [sorted(LABELS)] * 2
    assert all(p["output"] == max(p["loglik"], key=p["loglik"].get) for p in lines)
