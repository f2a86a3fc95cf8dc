"""`midalign merge`: the exact weighted merge of LoRA adapters, saved as a plain PEFT adapter.

With ``--search``, the task weight is chosen by a dev score (the paper's Appendix D.3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midalign.cli.options import LIMIT_HELP, add_output_options, positive_int
from midalign.errors import InputError
from midalign.files import check_output_dir, write_json
from midalign.training.merge import merge_adapters, search_weight


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge LoRA adapters exactly: ΔW = Σ wᵢ·ΔWᵢ (e.g. task + alignment adapters)",
        description="Merge PEFT LoRA adapters of the same base model so that, for every module, "
        "the merged update equals Σ wᵢ·sᵢ·BᵢAᵢ exactly (factors concatenated, rank Σ rᵢ). "
        "Unlike PEFT's add_weighted_adapter(combination_type='linear'), no cross terms. "
        "With --search, two adapters (task, then alignment) are merged at each candidate task "
        "weight w (alignment 1 − w), scored on dev data as `midalign eval` scores by default "
        "(greedy answers, the task's metric and its own cap on new tokens), and the best merge "
        "is kept.",
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
        help="comma-separated non-negative weights summing to 1, one per adapter, e.g. 0.9,0.1 "
        "(the paper's task/alignment weight is 0.9, chosen from 0.5, 0.7, 0.9)",
    )
    p.add_argument(
        "--search",
        metavar="W,W,...",
        help="candidate weights of the first (task) adapter, e.g. 0.5,0.7,0.9; needs --task, "
        "--dev-data and --langs",
    )
    p.add_argument("--model", default="default", help="base model for --search scoring")
    p.add_argument("--task", help="--search: the task (slots, mt, ner, topic)")
    p.add_argument("--dev-data", help="--search: the task's data (as `midalign eval --data`)")
    p.add_argument("--langs", help="--search: languages (or mt directions) to score on")
    p.add_argument("--split", default="dev", help="--search: data split (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="--search: " + LIMIT_HELP)
    p.add_argument(
        "--batch-size", type=positive_int, default=16, help="--search: prompts per batch"
    )
    add_output_options(p, "output adapter folder", "no progress bars")


def parse_weights(text: str, option: str = "--weights") -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError as e:
        raise InputError(f"{option}: expected numbers such as 0.9,0.1; got {text!r}") from e


def _search(args: argparse.Namespace, paths: list[Path]) -> tuple[float, dict[str, float]]:
    """``--search``: its options checked, the dev data read, the weights scored."""
    from midalign.evaluation.tasks import get_task

    missing = [o for o in ("task", "dev_data", "langs") if getattr(args, o) is None]
    if missing:
        raise InputError(f"--search needs --{missing[0].replace('_', '-')}")
    if len(paths) != 2:
        raise InputError(f"--search merges two adapters (task, alignment), not {len(paths)}")
    candidates = parse_weights(args.search, "--search")
    if any(not 0 <= w <= 1 for w in candidates):
        raise InputError(f"--search: weights must be in [0, 1], got {candidates}")
    task = get_task(args.task)
    keys = task.languages(args.langs)
    examples = task.read(args.dev_data, keys, args.split, args.limit)
    return search_weight(
        paths,
        candidates,
        args.model,
        task,
        examples,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        on_score=lambda w, result: print(
            f"task weight {w:g}: dev {result['metric']} {result['average']:.4f}"
        ),
        cli=True,
    )


def run(args: argparse.Namespace) -> int:
    names, paths = [], []
    for spec in args.adapters:
        name, sep, path = spec.rpartition("=")
        name = name if sep else Path(spec).name
        if name in names:
            raise InputError(
                f"--adapters: two adapters are named {name!r}; give each its own name, "
                "e.g. task=DIR align=DIR"
            )
        names.append(name)
        paths.append(Path(path))
    if (args.weights is None) == (args.search is None):
        raise InputError("give either --weights or --search")
    search = None
    if args.search is not None:
        check_output_dir(args.out, args.overwrite)
        best, scores = _search(args, paths)
        weights = [best, 1 - best]
        search = {"task": args.task, "data": args.dev_data, "langs": args.langs, "scores": scores}
    else:
        weights = parse_weights(args.weights)
    config = merge_adapters(paths, weights, args.out, args.overwrite, cli=True)
    if search is not None:
        write_json(args.out / "search.json", {**search, "chosen": weights[0]})
    parts = " + ".join(f"{w:g}·{n}" for w, n in zip(weights, names, strict=True))
    print(
        f"merged {parts} into {args.out}/ (rank {config['r']}, {len(config['target_modules'])} "
        "target module kinds)"
    )
    return 0
