"""The alignment micro-batch's FLOP floor (benchmarks/flops.py): by hand on a tiny config, and
against torch's FlopCounterMode on a real LoRA forward and backward of tiny models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

from midalign.modeling.forward import pooled_states
from midalign.training.losses import info_nce

_spec = importlib.util.spec_from_file_location(
    "bench_flops", Path(__file__).resolve().parents[1] / "benchmarks" / "flops.py"
)
flops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flops)

# hidden 16, 2 query heads and 1 key-value head of dim 8 (A = 16), MLP 32, 2 layers
TINY = dict(
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_attention_heads=2,
    num_key_value_heads=1,
    num_hidden_layers=2,
    pad_token_id=0,
)


def test_floor_by_hand() -> None:
    # per layer, in·out: q 16·16 + k 16·8 + v 16·8 + o 16·16 + gate, up 16·32 + down 32·16 = 2304,
    # of which q, k, v 512; LoRA Σ(in + out) = 32 + 24 + 24 + 32 + 48 + 48 + 48 = 256, of which
    # the inputs of q, k, v 48. Rows of 3 and 5 tokens: N = 8, causal pairs S = 6 + 15 = 21.
    got = flops.align_step_flops(LlamaConfig(**TINY), [3, 5], layer=2, lora_rank=2)
    assert got == {
        "forward_projections": 2 * 2 * 8 * 2304,  # l · 2N · Σ in·out
        "forward_attention": 2 * 2 * 2 * 16 * 21,  # l · (QKᵀ, AV) · 2A·S
        "backward_projections": 2 * 8 * (2 * 2304 - 512),  # no dX below layer 1's q, k, v
        "backward_attention": 2 * (2 * 2 * 2 * 16 * 21),
        "lora_forward": 2 * 2 * 8 * 2 * 256,  # l · 2N·r · Σ(in + out)
        "lora_backward": 2 * 8 * 2 * (2 * 2 * 256 - 48),  # dB, d(xA), dA, dX but layer 1's qkv
        "total": 73728 + 2688 + 65536 + 5376 + 16384 + 31232,
    }


def _tiny(family: str) -> torch.nn.Module:
    """A 3-layer tiny model; the Gemma 3 one has head_dim 12 ≠ hidden / heads, which the count
    must read from the config."""
    torch.manual_seed(0)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**TINY, "num_hidden_layers": 3}))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**{**TINY, "num_hidden_layers": 3}, head_dim=12))
    model.set_attn_implementation("eager")  # QKᵀ and AV as matmuls the counter sees
    return model


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_floor_against_flop_counter(family: str) -> None:
    """FlopCounterMode counts every matmul the step runs, padding included. Its ``mm`` (the
    projections and LoRA, forward and backward) equals the floor counted at the padded width
    T, term for term: autograd computes no frozen-weight gradient and no dX below layer 1's
    q, k, v, as the floor assumes. Its ``bmm`` is the floor's attention over the full T × T
    square (eager attention scores every pair; the causal mask only hides half of them) plus
    the pooling and InfoNCE matmuls the floor leaves out."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _tiny(family), LoraConfig(r=2, lora_alpha=4, target_modules=list(flops.LORA_TARGETS))
    ).train()
    config, layer, pairs, width = model.config, 2, 2, 6
    lengths = [6, 4, 5, 3]  # x rows, then y rows; left-padded to 6
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    ids = torch.randint(4, 64, mask.shape) * mask
    with FlopCounterMode(display=False) as counter:
        pooled = pooled_states(model, ids, mask, [layer], pool="mean-all")  # [1, 2B, d]
        info_nce(pooled[:, :pairs], pooled[:, pairs:]).backward()
    counted = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}

    floor = flops.align_step_flops(config, [width] * len(lengths), layer, lora_rank=2)
    d, rows = config.hidden_size, len(lengths)
    a = config.num_attention_heads * config.head_dim
    square = 3 * layer * 2 * 2 * a * rows * width * width  # forward + 2 × backward
    pooling = 2 * (2 * rows * width * d)  # einsum btd,bt->bd and its gradient
    similarity = 3 * (2 * pairs * pairs * d)  # x·yᵀ and the gradients of x and y
    assert counted == {
        "aten.mm": floor["forward_projections"]
        + floor["backward_projections"]
        + floor["lora_forward"]
        + floor["lora_backward"],
        "aten.bmm": square + pooling + similarity,
    }
    # the floor itself counts real tokens, 18 of the 24 run, and the causal pairs of each
    # row's own length, 21 + 10 + 15 + 6 = 52 of the 4 · 21 of the padded rows
    real = flops.align_step_flops(config, lengths, layer, lora_rank=2)
    assert real["forward_projections"] == floor["forward_projections"] * 18 // 24
    assert real["forward_attention"] == floor["forward_attention"] * 52 // 84


def test_floor_refuses_what_it_would_miscount() -> None:
    config = LlamaConfig(**TINY)
    with pytest.raises(ValueError, match="out of range"):
        flops.align_step_flops(config, [3], layer=3, lora_rank=2)
    with pytest.raises(ValueError, match="sliding window"):
        flops.align_step_flops(Gemma3TextConfig(**TINY, sliding_window=4), [5], 1, 2)
