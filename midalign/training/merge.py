"""Exact weighted merging of LoRA adapters (docs/design.md §5).

For adapters i with factors A_i [r_i, in], B_i [out, r_i] and scale s_i (α_i / r_i, or
α_i / √r_i with rsLoRA), the merged adapter must satisfy, for every module,

    ΔW = Σ_i w_i · s_i · B_i A_i

Concatenating the factors does that exactly: A = [A_1; A_2; …] (rank Σ r_i) and
B = [w_1 s_1 B_1, w_2 s_2 B_2, …], saved with α = r so that PEFT's own scale is 1. PEFT's
``add_weighted_adapter(combination_type="linear")`` instead mixes A's and B's separately, which
creates cross terms B_1 A_2; it is not this. Its ``combination_type="cat"`` is this ΔW (it folds
w_i s_i into A instead of B), for adapters already on one PEFT model in memory; so adapters here
may be folders or adapters on a PEFT model, and the merge may be written to a folder or added to
that model. A module that only some adapters touch gets zero factors for the others, so every
module has the same rank and the result is a plain PEFT adapter.

:func:`search_weight` chooses the task adapter's weight by a dev score (the paper's Appendix D.3).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from midalign.errors import InputError
from midalign.files import atomic_output_dir, write_json
from midalign.modeling.adapters import CONFIG, WEIGHTS, check_rank, open_weights, read_config
from midalign.modeling.loading import same_base
from midalign.training.model_card import merge_card, write_card

if TYPE_CHECKING:
    from peft import PeftModel

    from midalign.evaluation.tasks import Example, Task

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<kind>[AB])\.weight$")

Factors = dict[str, dict[str, torch.Tensor]]  # module -> {"A": [r, in], "B": [out, r]}
# What errors call the adapters and the weights: the Python API's arguments, `midalign merge`'s
# options.
API = ("merge_adapters", "merge_adapters: weights")
CLI = ("--adapters", "--weights")


def read_adapter(path: Path, name: str = API[0]) -> tuple[dict, Factors]:
    """An adapter folder's config and its factors; errors start with ``name``."""
    path = Path(path)
    weights_file = path / WEIGHTS
    config = read_config(path, name)  # a folder without adapter_config.json fails here
    if not weights_file.is_file():
        raise InputError(f"{name}: {weights_file} not found (not a PEFT LoRA adapter folder)")
    _check_mergeable(config, f"{name}: {path}")
    with open_weights(weights_file, name) as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    factors = _factors(tensors, f"{name}: {weights_file}")
    check_rank(config, {k: t.shape for k, t in tensors.items()}, path, name)
    return config, factors


def read_in_memory(model: PeftModel, name: str | None = None) -> tuple[dict, Factors]:
    """The config and factors of adapter ``name`` (default: the active one) of a PEFT model."""
    from peft.utils import get_peft_model_state_dict

    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        raise InputError(
            f"merge_adapters: a {type(model).__name__} is neither an adapter folder nor a PEFT "
            "model"
        )
    name = model.active_adapter if name is None else name
    if name not in configs:
        raise InputError(
            f"merge_adapters: the PEFT model has no adapter {name!r} (it has {', '.join(configs)})"
        )
    where = f"merge_adapters: adapter {name!r}"
    # to_dict leaves target_modules a set; a saved config has a list
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in configs[name].to_dict().items()}
    _check_mergeable(config, where)
    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    return config, _factors({k: v.detach().cpu() for k, v in state.items()}, where)


def _check_mergeable(config: Mapping, where: str) -> None:
    if config.get("peft_type") != "LORA":
        raise InputError(f"{where} is a {config.get('peft_type')} adapter, not LoRA")
    for option in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if config.get(option):
            raise InputError(f"{where} uses {option}, which merging does not support")


def _factors(tensors: Mapping[str, torch.Tensor], where: str) -> Factors:
    factors: Factors = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise InputError(f"{where} holds {key}, not a LoRA factor")
        factors.setdefault(match["module"], {})[match["kind"]] = tensor
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise InputError(f"{where}: {module} lacks lora_A or lora_B")
    return factors


def lora_scale(config: Mapping) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_weights(weights: Sequence[float], name: str = API[1]) -> None:
    if not all(math.isfinite(w) for w in weights):  # NaN passes both checks below
        raise InputError(f"{name} must be finite numbers, got {list(weights)}")
    if any(w < 0 for w in weights):
        raise InputError(f"{name} must be non-negative, got {list(weights)}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise InputError(f"{name} must sum to 1, got {list(weights)} (sum {sum(weights):g})")


def merge_factors(
    loaded: Sequence[tuple[dict, Factors]], weights: Sequence[float], name: str = API[0]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The merged adapter's config and tensors (PEFT's saved names) from (config, factors);
    errors start with ``name``."""
    bases = [b for b in (c.get("base_model_name_or_path") for c, _ in loaded) if b]
    other = next((b for b in bases if not same_base(bases[0], b)), None)
    if other is not None:
        raise InputError(f"{name}: adapters of different base models: {bases[0]}, {other}")
    modules = sorted(set().union(*(f.keys() for _, f in loaded)))
    merged: dict[str, torch.Tensor] = {}
    for module in modules:
        shapes = {
            (f[module]["B"].shape[0], f[module]["A"].shape[1]) for _, f in loaded if module in f
        }
        if len(shapes) > 1:
            raise InputError(f"{name}: {module} has different shapes across adapters: {shapes}")
        (out_dim, in_dim) = shapes.pop()
        a_parts, b_parts = [], []
        for (config, factors), w in zip(loaded, weights, strict=True):
            r = config["r"]
            if module in factors:
                a = factors[module]["A"].float()  # [r, in]
                b = factors[module]["B"].float() * (w * lora_scale(config))  # [out, r]
            else:
                a, b = torch.zeros(r, in_dim), torch.zeros(out_dim, r)
            a_parts.append(a)
            b_parts.append(b)
        merged[f"{module}.lora_A.weight"] = torch.cat(a_parts, dim=0).contiguous()
        merged[f"{module}.lora_B.weight"] = torch.cat(b_parts, dim=1).contiguous()
    rank = sum(c["r"] for c, _ in loaded)
    config = dict(loaded[0][0])
    targets = set()
    for c, _ in loaded:
        t = c.get("target_modules") or []
        targets |= {t} if isinstance(t, str) else set(t)
    config.update(
        base_model_name_or_path=bases[0] if bases else config.get("base_model_name_or_path"),
        r=rank,
        lora_alpha=rank,  # PEFT scale α / r = 1: the weights and scales are folded into B
        use_rslora=False,
        lora_dropout=max(c.get("lora_dropout", 0.0) for c, _ in loaded),
        target_modules=sorted(targets),
    )
    return config, merged


def merge_adapters(
    adapters: Sequence[str | os.PathLike | PeftModel | tuple[PeftModel, str]],
    weights: Sequence[float],
    out: Path | None = None,
    overwrite: bool = False,
    adapter_name: str = "merged",
    *,
    cli: bool = False,
) -> dict:
    """The exact weighted merge of ``adapters``; returns its adapter config.

    Each adapter is a folder, a PEFT model (its active adapter) or ``(peft_model, name)``. With
    ``out`` the merge is written there as a plain PEFT adapter folder; without it, it is added
    to the PEFT model the in-memory adapters are on as ``adapter_name``, not activated (as PEFT's
    ``add_weighted_adapter(..., combination_type="cat")`` does: ``model.set_adapter`` uses it).
    Errors name the arguments, or with ``cli`` the options of `midalign merge`.
    """
    adapters_name, weights_name = CLI if cli else API
    if len(adapters) != len(weights):
        raise InputError(f"{weights_name}: {len(weights)} weights for {len(adapters)} adapters")
    check_weights(weights, weights_name)
    loaded, labels, models = [], [], []
    for adapter in adapters:
        if isinstance(adapter, str | os.PathLike):
            loaded.append(read_adapter(Path(adapter), adapters_name))
            labels.append(str(adapter))
            continue
        model, name = adapter if isinstance(adapter, tuple) else (adapter, None)
        loaded.append(read_in_memory(model, name))
        labels.append(f"{name or model.active_adapter} (in memory)")
        models.append(model)
    config, merged = merge_factors(loaded, weights, adapters_name)
    if out is None:
        _add_to_model(models, adapter_name, config, merged)
        return config
    with atomic_output_dir(out, overwrite) as tmp:
        save_file(merged, tmp / WEIGHTS, metadata={"format": "pt"})
        write_json(tmp / CONFIG, config)
        write_json(
            tmp / "merge.json", {"adapters": labels, "weights": list(weights), "rank": config["r"]}
        )
        write_card(tmp, merge_card(labels, weights, tmp))
    return config


def _add_to_model(
    models: Sequence[PeftModel], name: str, config: dict, tensors: dict[str, torch.Tensor]
) -> None:
    """The merged adapter added to the one PEFT model the in-memory adapters are on."""
    from peft import PeftConfig
    from peft.utils import set_peft_model_state_dict

    if not models or any(m is not models[0] for m in models):
        raise InputError(
            "merge_adapters: without out (a folder), the adapters must be on one PEFT model, "
            f"which the merge is added to ({len({id(m) for m in models})} models given)"
        )
    model = models[0]
    if name in model.peft_config:
        raise InputError(f"merge_adapters: the PEFT model already has an adapter {name!r}")
    model.add_adapter(name, PeftConfig.from_peft_type(**config))
    set_peft_model_state_dict(model, tensors, adapter_name=name)


def search_weight(
    adapters: Sequence[Path],
    candidates: Sequence[float],
    model: str,
    task: Task,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    progress: bool = True,
    on_score: Callable[[float, dict[str, Any]], None] | None = None,
    cli: bool = False,
) -> tuple[float, dict[str, float]]:
    """Merge two adapters (task, then alignment) at each candidate task weight w (alignment
    1 − w), evaluate each merge on the dev ``examples``, and return the best w and every score
    by ``f"{w:g}"`` (a tie goes to the larger task weight). ``on_score(w, result)`` sees each
    evaluation as it finishes; ``cli`` names `midalign merge`'s options in errors."""
    from midalign.evaluation.run import evaluate
    from midalign.modeling.loading import load_model

    scores: dict[str, float] = {}
    for w in sorted(candidates):
        with tempfile.TemporaryDirectory(prefix="midalign-merge-") as tmp:
            merged = Path(tmp) / "adapter"
            merge_adapters(adapters, [w, 1 - w], merged, cli=cli)
            lm, tokenizer = load_model(model, str(merged))
            result = evaluate(
                lm, tokenizer, task, examples, batch_size=batch_size, progress=progress
            )
        scores[f"{w:g}"] = result["average"]
        if on_score is not None:
            on_score(w, result)
    best = max(candidates, key=lambda w: (scores[f"{w:g}"], w))
    return best, scores
