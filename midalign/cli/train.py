"""`midalign train`: LoRA fine-tuning with middle-layer contrastive alignment.

The method is docs/design.md §2; this module parses the options and calls
:func:`midalign.training.run.train`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path
from typing import Any

from midalign.errors import InputError
from midalign.files import write_json
from midalign.training import run_dir
from midalign.training.config import (
    SECTIONS,
    TrainConfig,
    apply_overrides,
    diff,
    field_help,
    load_config,
    option_names,
)
from midalign.training.config_checks import validate

_PREFIX = "config:"  # argparse dest prefix of the generated config options

DESCRIPTION = """\
Fine-tune a LoRA adapter on instruction data while a contrastive loss (InfoNCE over cosines
of mean-pooled hidden states / τ) pulls the middle-layer representations of translation pairs
together (Liu & Niehues 2025). Schedules: alternate (task and alignment micro-batches in turn
within each optimizer step, as the paper's code), alternate-steps (whole optimizer steps of
each in turn, as the paper's text), joint (task + λ·align), task (plain SFT), align (alignment
only, for merging). --normalize center|standardize takes a per-dimension mean (and standard
deviation) out of the pooled states before the cosine, with the batch's statistics or the base
model's (--align-stats base). Every evaluation logs the dev alignment loss and the τ-free
in-batch top-1 accuracy (eval_align_acc).

Settings come from dataclass defaults (the paper's), then --config FILE (YAML with sections
model, lora, data, align, optim), then the options below. Every setting can be given as
--section.field; most also have a short form.

Writes into --out: adapter_model.safetensors + adapter_config.json (the best adapter by dev
loss, a plain PEFT adapter), config.yaml, log.jsonl, training_curves.png, train_result.json and
checkpoints/. An existing --out is refused unless --resume (continue from its last checkpoint,
same config) or --overwrite (delete it and start over). SIGINT/SIGTERM saves a checkpoint first.

Several processes: accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N
-m midalign train ... (batch_size and batch_pairs are per process; --gather-negatives true gives
every rank the global batch as negatives).
"""


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value) or "none"
    return str(value)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="LoRA fine-tuning with middle-layer alignment "
        "(alternate/alternate-steps/joint/task/align)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="recipe YAML (e.g. recipes/train/cpu_demo.yaml)")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last complete checkpoint (optimizer, "
        "scheduler, RNG and both data streams); its config must be the same",
    )
    mode.add_argument("--overwrite", action="store_true", help="delete --out and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    names = option_names()
    for section, cls in SECTIONS.items():
        group = p.add_argument_group(f"{section} settings ({cls.__name__})")
        for key, options in names.items():
            if not key.startswith(section + "."):
                continue
            text, default = field_help(key)
            group.add_argument(
                *options,
                dest=_PREFIX + key,
                default=argparse.SUPPRESS,
                metavar=key.split(".")[1].upper(),
                help=f"{text} (default: {_shown(default)})".replace("%", "%%"),
            )


def resolve_config(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """The options on top of --config, or else on top of ``base`` (a resumed run's own config),
    or else the defaults."""
    overrides = {k[len(_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(_PREFIX)}
    if args.config:
        config = load_config(args.config)
    else:
        config = copy.deepcopy(base) if base is not None else TrainConfig()
    return apply_overrides(config, overrides)


def _check_unchanged(out: Path, saved: TrainConfig, config: TrainConfig) -> None:
    """--resume continues a run only with the config it was started with."""
    changed = diff(saved, config)
    if changed:
        old, new = saved.to_dict(), config.to_dict()
        details = "; ".join(
            f"{k}: {_shown(old[k.split('.')[0]][k.split('.')[1]])} -> "
            f"{_shown(new[k.split('.')[0]][k.split('.')[1]])}"
            for k in changed
        )
        raise InputError(f"--resume: {out} was trained with a different config ({details})")


def run(args: argparse.Namespace) -> int:
    from midalign.training.run import train

    out: Path = args.out
    checkpoint = None
    if args.resume:
        # the run's own config.yaml, with any option given now on top: a change is refused
        saved = run_dir.read_config(out)
        config = resolve_config(args, saved)
        _check_unchanged(out, saved, config)
        validate(config)
        checkpoint = run_dir.resume_point(out, required=True)
    else:
        config = resolve_config(args)
        validate(config)
        run_dir.create(out, config, args.overwrite)
    try:
        result = train(config, out, checkpoint, progress=not args.no_progress)
    except BaseException:
        if not args.resume:
            run_dir.discard_unstarted(out)
        raise
    if not run_dir.process_state().is_main_process:
        return 0
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "log_history"}
    write_json(out / run_dir.RESULT_FILE, summary)
    if result.interrupted:
        print(
            f"stopped at step {result.global_step}; checkpoint saved. "
            f"Continue with: midalign train --out {out} --resume"
        )
        return 130
    best = (
        f", best dev {result.best_metric:.4f} at {Path(result.best_checkpoint).name}"
        if result.best_checkpoint and result.best_metric is not None
        else ""
    )
    steps = f"{result.global_step} step{'s' if result.global_step != 1 else ''}"
    print(f"trained {steps}{best}; adapter in {out}")
    return 0
