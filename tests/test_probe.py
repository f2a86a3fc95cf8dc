from __future__ import annotations

import pytest
import torch
from conftest import assert_same_numbers, tiny_model, tiny_tokenizer

from midalign.errors import InputError
from midalign.modeling.forward import pooled_states
from midalign.probe.embeddings import extract_embeddings, special_token_ids, token_budget_batches

SENTENCES = [
    "all human beings are born free",
    "der mensch",
    "everyone is equal in dignity and rights . the law is the law of all people",
    "la",
    "le droit et la loi",
    "x",
    "people of the world 1 2 3",
]


def test_token_budget_batches_sort_longest_first_and_respect_the_budget():
    lengths = [3, 9, 4, 1, 4, 12]
    batches = token_budget_batches(lengths, batch_tokens=12)
    # longest first: 12 alone (12), 9 alone (2×9 > 12), then 4,4,3 (3×4 = 12), then 1
    assert batches == [[5], [1], [2, 4, 0], [3]]
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b[0]] <= 12
    with pytest.raises(InputError, match="--batch-tokens"):
        token_budget_batches(lengths, 0)


def test_extract_embeddings_keeps_input_order_whatever_the_batching():
    model, tok = tiny_model("gemma3", n_layers=3), tiny_tokenizer()
    one_by_one = []
    for s in SENTENCES:
        enc = tok([s], return_tensors="pt")
        one_by_one.append(
            pooled_states(
                model, enc.input_ids, enc.attention_mask, [0, 2, 3], "mean", special_token_ids(tok)
            )
        )
    expected = torch.cat(one_by_one, dim=1)  # [3, n, d]
    for budget in (1, 16, 10_000):
        got = extract_embeddings(model, tok, SENTENCES, [0, 2, 3], "mean", budget, progress=False)
        assert got.shape == (3, len(SENTENCES), 32) and got.dtype == torch.float32
        for got_layer, want in zip(got, expected, strict=True):  # batched vs one by one
            assert_same_numbers(got_layer, want, torch.float32)


def test_special_token_ids_are_bos_eos_pad():
    assert special_token_ids(tiny_tokenizer()) == [0, 1, 2]
