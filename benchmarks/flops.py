"""The FLOP floor of one alignment micro-batch, counted by hand from a model config: the matmuls
the step cannot avoid, to set its measured time against the machine's matmul rate.

The step (``AlignmentTrainer.align_loss`` + backward, LoRA on a frozen model) runs the 2B rows
through decoder layers 1..l, pools layer l and backpropagates into the LoRA weights. What it must
compute at least, with n_i the real (non-padding) tokens of row i, N = Σ n_i, S = Σ n_i(n_i+1)/2
the query-key pairs a causal mask keeps, A = heads · head_dim, and (in, out) the shapes of one
layer's projections q, k, v, o, gate, up, down (a gated MLP: Llama, Qwen2, Gemma, Mistral):

  forward, projections     l · 2N · Σ in·out
  forward, attention       l · 2 · 2A·S                     (QKᵀ and AV)
  backward, projections    2N · (l · Σ in·out − Σ_qkv in·out)   input gradients dX = dY·Wᵀ
  backward, attention      2 · forward attention             (dQ, dK from QKᵀ; dA, dV from AV)
  LoRA forward             l · 2N·r · Σ_targets (in + out)   (x·A, then ·B)
  LoRA backward            2N·r · (l · Σ_targets 2(in + out) − Σ_targets∩qkv in)
                           (dB, d(xA), dA, and dX through A)

The frozen weights get no gradient (LoRA's point), and layer 1's q, k, v projections need no
input gradient: below them is the frozen embedding, so autograd skips dX there (hence the
Σ_qkv terms). Left out, as O(N·d) or smaller next to O(N·d²) matmuls: the embedding lookup,
norms, RoPE, softmax, activations, residual adds, dropout, the pooling and the InfoNCE loss
(a B × B similarity). Padding is not counted: rows padded to the batch's longest are work a
batching scheme chooses, not work the step needs.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FIRST_LAYER_NO_DX = ("q_proj", "k_proj", "v_proj")  # their input is the frozen embedding's


def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear projection of one decoder layer of a gated-MLP model config."""
    d, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    inter = config.intermediate_size
    return {
        "q_proj": (d, heads * head_dim),
        "k_proj": (d, kv * head_dim),
        "v_proj": (d, kv * head_dim),
        "o_proj": (heads * head_dim, d),
        "gate_proj": (d, inter),
        "up_proj": (d, inter),
        "down_proj": (inter, d),
    }


def align_step_flops(
    config,
    lengths: Sequence[int],
    layer: int,
    lora_rank: int,
    lora_targets: Collection[str] = LORA_TARGETS,
) -> dict[str, int]:
    """The FLOP floor (module docstring) of one alignment micro-batch whose rows have ``lengths``
    real tokens, stopped after decoder layer ``layer``, with LoRA of rank ``lora_rank`` on
    ``lora_targets``: each term and their ``total`` (a multiply-add counts 2).

    A row longer than the config's sliding window would make the causal count too high, so it
    is refused rather than miscounted.
    """
    if not 1 <= layer <= config.num_hidden_layers:
        raise ValueError(f"layer {layer} out of range 1..{config.num_hidden_layers}")
    if lora_rank < 1:
        raise ValueError(f"lora_rank must be positive, not {lora_rank}")
    window = getattr(config, "sliding_window", None)
    if window and max(lengths) > window:
        raise ValueError(f"a row of {max(lengths)} tokens exceeds the sliding window {window}")
    shapes = projection_shapes(config)
    unknown = set(lora_targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}")
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    width = shapes["q_proj"][1]  # A = heads · head_dim
    weights = sum(i * o for i, o in shapes.values())
    first_no_dx = sum(i * o for p, (i, o) in shapes.items() if p in FIRST_LAYER_NO_DX)
    lora_io = sum(i + o for p, (i, o) in shapes.items() if p in lora_targets)
    lora_first_in = sum(shapes[p][0] for p in lora_targets if p in FIRST_LAYER_NO_DX)
    flops = {
        "forward_projections": layer * 2 * tokens * weights,
        "forward_attention": layer * 2 * 2 * width * pairs,
        "backward_projections": 2 * tokens * (layer * weights - first_no_dx),
        "backward_attention": layer * 2 * 2 * 2 * width * pairs,
        "lora_forward": layer * 2 * tokens * lora_rank * lora_io,
        "lora_backward": 2 * tokens * lora_rank * (layer * 2 * lora_io - lora_first_in),
    }
    flops["total"] = sum(flops.values())
    return flops
