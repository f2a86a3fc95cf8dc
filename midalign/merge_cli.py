"""`midalign merge`: the exact weighted merge of LoRA adapters, saved as a plain PEFT adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from midalign.errors import InputError
from midalign.merge import merge_adapters


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge LoRA adapters exactly: ΔW = Σ wᵢ·ΔWᵢ (e.g. task + alignment adapters)",
        description="Merge PEFT LoRA adapters of the same base model so that, for every module, "
        "the merged update equals Σ wᵢ·sᵢ·BᵢAᵢ exactly (factors concatenated, rank Σ rᵢ). "
        "Unlike PEFT's add_weighted_adapter(combination_type='linear'), no cross terms.",
    )
    p.add_argument(
        "--adapters",
        nargs="+",
        required=True,
        metavar="NAME=DIR",
        help="adapter folders, optionally named: task=runs/t align=runs/a",
    )
    p.add_argument(
        "--weights",
        required=True,
        help="comma-separated non-negative weights summing to 1, one per adapter, e.g. 0.9,0.1 "
        "(the paper's task/alignment weight is 0.9, chosen from 0.5, 0.7, 0.9)",
    )
    p.add_argument("--out", type=Path, required=True, help="output adapter folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def parse_weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError as e:
        raise InputError(f"--weights: expected numbers such as 0.9,0.1; got {text!r}") from e


def run(args: argparse.Namespace) -> int:
    weights = parse_weights(args.weights)
    names, paths = [], []
    for spec in args.adapters:
        name, sep, path = spec.rpartition("=")
        names.append(name if sep else Path(spec).name)
        paths.append(Path(path))
    config = merge_adapters(paths, weights, args.out, args.overwrite)
    parts = " + ".join(f"{w:g}·{n}" for w, n in zip(weights, names, strict=True))
    print(
        f"merged {parts} into {args.out}/ (rank {config['r']}, {len(config['target_modules'])} "
        "target module kinds)"
    )
    return 0
