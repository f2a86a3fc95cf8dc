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
