"""Find a causal LM's decoder layers, count them, and read ``--layers``.

The layers are found through PEFT and DDP wrappers. Layer indices follow HF's
``output_hidden_states``: 0 = embedding output, l = output of decoder layer l, up to L.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from midalign.errors import InputError
from midalign.modeling.placement import execution_device


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model, through PEFT and DDP/FSDP wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP
            model = model.module
        else:
            return model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The decoder module that owns ``embed_tokens``, ``layers`` and ``norm``.

    Llama, Mistral, Qwen2, Gemma/Gemma2/Gemma3 (text and multimodal) all share this shape.
    """
    inner = unwrap(model)
    for path in ("model", "model.language_model", "language_model", "model.model"):
        candidate: nn.Module | None = inner
        for attr in path.split("."):
            candidate = getattr(candidate, attr, None)
        if (
            isinstance(candidate, nn.Module)
            and isinstance(getattr(candidate, "layers", None), nn.ModuleList)
            and isinstance(getattr(candidate, "embed_tokens", None), nn.Module)
            and isinstance(getattr(candidate, "norm", None), nn.Module)
        ):
            return candidate
    raise InputError(
        f"cannot find the decoder layers of {type(inner).__name__} "
        "(supported: models with .model.layers, .model.embed_tokens and .model.norm, "
        "e.g. Llama, Mistral, Qwen2, Gemma, Gemma 3)"
    )


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embeddings' device (a module without any: its first
    parameter's). ``model.device`` is the first parameter's, which for a model placed by
    ``--device-map`` may be another device, or meta when the embeddings are offloaded."""
    inner = unwrap(model)
    get = getattr(inner, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    return execution_device(embeddings if embeddings is not None else inner)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return decoder_stack(model).layers


def num_layers(model: nn.Module) -> int:
    """L, the number of decoder layers; valid layer indices are 0 (embeddings) … L."""
    return len(decoder_layers(model))


def parse_layers(
    spec: str | int | Sequence[int], n_layers: int, option: str = "--layers"
) -> list[int]:
    """``all`` → 0..L, ``even`` → 0,2,…,L (+L), ``middle`` → L//2, a list such as ``2,4,9``, or
    one layer as an int (``AlignConfig(layers=16)``, YAML's ``layers: 16``)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if isinstance(spec, str):
        if spec == "all":
            return list(range(n_layers + 1))
        if spec == "even":
            return sorted(set(range(0, n_layers + 1, 2)) | {n_layers})
        if spec == "middle":
            return [n_layers // 2]
        try:
            layers = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError as e:
            raise InputError(
                f"{option}: expected all, even, middle or integers like 2,4,9; got {spec!r}"
            ) from e
    else:
        layers = [int(x) for x in spec]
    if not layers:
        raise InputError(f"{option}: no layer given")
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise InputError(
            f"{option}: layer {bad[0]} is out of range; "
            f"this model has layers 0 (embeddings) to {n_layers}"
        )
    return sorted(set(layers))
