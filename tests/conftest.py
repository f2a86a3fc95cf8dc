"""Tiny random models of every supported family, and the real-data location."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

_COMMON = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

TINY_FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config),
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig),
    "mistral": (MistralForCausalLM, MistralConfig),
}


def tiny_model(family: str, n_layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised causal LM with ``n_layers`` decoder layers (float32, eval mode)."""
    model_cls, config_cls = TINY_FAMILIES[family]
    extra = {"head_dim": 8} if family == "gemma3" else {}
    torch.manual_seed(seed)
    return model_cls(config_cls(num_hidden_layers=n_layers, **_COMMON, **extra)).eval()


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def tiny_tokenizer():
    """A word-level fast tokenizer over the tiny models' 128 ids: <pad>=0, <bos>=1, <eos>=2,
    <unk>=3, then lowercase letters, digits and frequent words; BOS is added like Llama's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    words = (
        list("abcdefghijklmnopqrstuvwxyz0123456789.,!?")
        + (
            "the a is of and to in human rights all everyone free equal dignity born der die das "
            "und ist le la les et est el los y es un une ein eine person people right law"
        ).split()
    )
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + words))}
    assert len(vocab) <= 128
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A saved tiny Gemma 3 model + tokenizer folder, loadable by ``--model DIR``."""
    path = tmp_path / "tiny-gemma3"
    tiny_model("gemma3", n_layers=4).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
