"""What the alignment loss needs besides the model, built from the config and the base model.

:class:`AlignSetup` holds it: the stream of training pairs, the layers, the loss options, the
held-out batches. :func:`align_setup` builds it from the ``align`` section for any trainer,
choosing the layer by probing the base model's retrieval when ``layers: auto``. A trainer
handed its pairs directly (:class:`midalign.training.trainer.AlignmentTrainer`,
:class:`midalign.trl.AlignmentSFTTrainer`) builds it with :func:`pairs_setup`. A ``midalign
train`` run builds it from its whole config (:func:`prepare_alignment`: the pairs read and
split, the base model's statistics for ``stats: base`` computed or, on resume, loaded;
:mod:`midalign.training.align_stats`), and gives each process its slice once the Trainer's arguments
know it (:func:`distribute_alignment`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase, TrainingArguments

from midalign.data.pairs import (
    AlignStream,
    Pairs,
    as_pairs,
    encode_pairs,
    load_pairs,
    split_dev,
    warn_long_pairs,
)
from midalign.errors import InputError
from midalign.modeling.forward import grouped_pooled_states
from midalign.modeling.layers import num_layers, parse_layers
from midalign.probe.embeddings import extract_embeddings, special_token_ids
from midalign.probe.retrieval import pair_accuracy
from midalign.sections import check
from midalign.training.align_stats import (
    STATS_FILE,
    base_stats,
    broadcast_stats,
    load_stats,
    save_stats,
)
from midalign.training.config import AlignConfig, TrainConfig
from midalign.training.losses import Stats

log = logging.getLogger(__name__)


# The fixed cost of one more sub-batch's forward and backward, in tokens of work, by (device
# type, under autocast): the alignment batch runs as length-sorted sub-batches where the padding
# they save costs more than that (:func:`midalign.modeling.forward.grouped_pooled_states`). Fitted
# on the default model's micro-batch on the CPU (docs/benchmarks.md, docs/bench/
# align_subbatch_sweep-1203.json): float32 2.8 ms a token and 97 ms a sub-batch (34 tokens); under
# bf16 autocast 1.6 ms and 157 ms (96 tokens: each forward casts the frozen weights to bf16 again).
# Other devices (GPUs, not measured here) keep one padded batch.
SUB_BATCH_OVERHEAD = {("cpu", False): 32.0, ("cpu", True): 96.0}


@dataclass
class AlignSetup:
    """Everything the alignment loss needs besides the model."""

    stream: AlignStream
    layers: list[int]
    temperature: float = 0.1
    symmetric: bool = False
    gather: bool = False
    pool: str = "mean"
    normalize: str = "none"
    stats: Stats | None = None  # the base model's (μ, σ) [n_layers, d]; None: the batch's
    weight: float = 1.0
    matched: bool = False  # alternate: alignment added on top of the task micro-batches
    max_length: int = 128
    special_ids: list[int] = field(default_factory=list)
    dev_batches: list[dict[str, torch.Tensor]] = field(default_factory=list)

    def states(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Stats | None]:
        """Pooled alignment-layer states (before the final norm) of a 2B-row batch, x rows
        first: x and y, each [n_layers, B, d], and the constant statistics on their device."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pooled = grouped_pooled_states(
            model,
            ids,
            mask,
            self.layers,
            SUB_BATCH_OVERHEAD.get(
                (ids.device.type, torch.is_autocast_enabled(ids.device.type)), float("inf")
            ),
            pool=self.pool,
            special_ids=self.special_ids,
            final_norm=False,
        )  # [n_layers, 2B, d]
        b = ids.shape[0] // 2
        if self.stats is None:
            return pooled[:, :b], pooled[:, b:], None
        mean, std = (t.to(pooled.device) for t in self.stats)
        return pooled[:, :b], pooled[:, b:], (mean, std)


def choose_auto_layer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    per_lang: int,
    pool: str,
) -> tuple[int, dict[str, float]]:
    """The layer (1..L) where the base model retrieves the alignment pairs best: mean xsim
    accuracy over languages and both directions, on up to ``per_lang`` pairs per language."""
    n_layers = num_layers(model)
    layers = list(range(1, n_layers + 1))
    emb, sides = {}, []
    for lang, items in pairs.items():
        sample = items[:per_lang]
        for side, texts in (("x", [x for x, _ in sample]), ("y", [y for _, y in sample])):
            emb[f"{lang}:{side}"] = extract_embeddings(
                model, tokenizer, texts, layers, pool, progress=False
            )
        sides += [(f"{lang}:x", f"{lang}:y"), (f"{lang}:y", f"{lang}:x")]
    smallest = min(len(v) for v in pairs.values())
    margin = "ratio" if min(smallest, per_lang) > 4 else "cosine"
    acc = pair_accuracy(emb, sides, k=4, margin=margin).mean(dim=1)  # [L]
    by_layer = {str(layer): float(a) for layer, a in zip(layers, acc, strict=True)}
    best = layers[int(acc.argmax())]
    return best, by_layer


def resolve_layers(
    spec: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    per_lang: int,
    pool: str,
    option: str = "align.layers",
) -> tuple[list[int], dict[str, float] | None]:
    """``middle`` → L // 2; ``auto`` → probed peak; integers → themselves (1..L). Messages name
    ``option``: the config field, or ``--align-layers`` in ``midalign train``."""
    n_layers = num_layers(model)
    if spec == "auto":
        layer, by_layer = choose_auto_layer(model, tokenizer, pairs, per_lang, pool)
        log.info(
            "%s auto: layer %d (mean retrieval %.3f; by layer %s)",
            option,
            layer,
            by_layer[str(layer)],
            ", ".join(f"{k}: {v:.2f}" for k, v in by_layer.items()),
        )
        return [layer], by_layer
    layers = parse_layers(spec, n_layers, option)
    if 0 in layers:
        raise InputError(
            f"{option}: layer 0 is the embedding output, which LoRA does not change; "
            f"use 1 to {n_layers}"
        )
    return layers, None


def dev_batches(
    dev: Pairs, tokenizer: PreTrainedTokenizerBase, batch_pairs: int, max_length: int
) -> list[dict[str, torch.Tensor]]:
    """Held-out pairs in chunks of B per language (a last chunk of one pair joins the previous)."""
    batches = []
    for items in dev.values():
        starts = list(range(0, len(items), batch_pairs))
        if len(items) - starts[-1] < 2 and len(starts) > 1:
            starts.pop()
        bounds = [*starts[1:], len(items)]
        for start, end in zip(starts, bounds, strict=True):
            batches.append(encode_pairs(tokenizer, items[start:end], max_length))
    return batches


def align_setup(
    a: AlignConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    dev_pairs: Pairs,
    seed: int,
    max_length: int,
    rank: int = 0,
    world: int = 1,
    layers_option: str = "align.layers",
) -> tuple[AlignSetup, dict[str, float] | None]:
    """The alignment loss's setup from the ``align`` config section (without base statistics,
    which need the model before LoRA), and the auto layer choice's retrieval by layer (None
    unless ``layers: auto``). ``rank`` of ``world`` processes trains on its slice of the
    stream (:class:`~midalign.data.pairs.AlignStream`); ``layers_option`` is what messages call
    ``align.layers``."""
    layers, auto_retrieval = resolve_layers(
        a.layers, model, tokenizer, pairs, a.auto_pairs, a.pool, layers_option
    )
    setup = AlignSetup(
        stream=AlignStream(pairs, a.batch_pairs, seed, rank, world),
        layers=layers,
        temperature=a.temperature,
        symmetric=a.symmetric,
        gather=a.gather_negatives,
        pool=a.pool,
        normalize=a.normalize,
        weight=a.weight,
        matched=a.matched,
        max_length=max_length,
        special_ids=special_token_ids(tokenizer),
        dev_batches=dev_batches(dev_pairs, tokenizer, a.batch_pairs, max_length),
    )
    return setup, auto_retrieval


# ------------------------------------------------- a trainer handed its pairs (your own, TRL's)

PAIRS_SCHEDULES = ("alternate", "joint", "task")
"""The schedules of a trainer handed its pairs directly: ``alternate-steps`` and ``align`` write
the alternation into the Trainer's data loader, which only ``midalign train`` builds."""


def check_pairs_trainer(a: AlignConfig, trainer: str, has_pairs: bool) -> None:
    """The ``align`` section as ``midalign train`` checks it, a schedule ``trainer`` runs, and
    the pairs it needs (``has_pairs``); ``ValueError`` otherwise."""
    check(a, error=ValueError, path="align")
    if a.schedule != "task" and not has_pairs:
        raise ValueError(f"align.schedule {a.schedule} needs align_pairs")
    if a.schedule not in PAIRS_SCHEDULES:
        raise ValueError(
            f"align.schedule {a.schedule} is not available with {trainer} (only "
            f"{', '.join(PAIRS_SCHEDULES)}): train it with `midalign train`"
        )


def pairs_setup(
    a: AlignConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs | Iterable[Mapping[str, str]],
    dev_pairs: Pairs | Iterable[Mapping[str, str]] | None,
    args: TrainingArguments,
    max_length: int,
) -> AlignSetup:
    """The alignment setup of a trainer handed its pairs (:class:`midalign.training.trainer.
    AlignmentTrainer`, :class:`midalign.trl.AlignmentSFTTrainer`), in any form
    :func:`midalign.data.pairs.as_pairs` takes (``dev_pairs`` None: none): the stream is
    seeded with ``args.seed`` and sliced for this process; ``layers: auto`` and ``stats: base``
    measure ``model`` with its adapter disabled, the base model, as ``midalign train`` measures
    it before attaching LoRA."""
    seed = args.seed
    pairs = as_pairs(pairs)
    dev_pairs = as_pairs(dev_pairs) if dev_pairs is not None else {}
    warn_long_pairs(pairs, tokenizer, max_length, "align_pairs")
    warn_long_pairs(dev_pairs, tokenizer, max_length, "align_eval_pairs")
    with model.disable_adapter() if isinstance(model, PeftModel) else nullcontext():
        setup, _ = align_setup(
            a,
            model,
            tokenizer,
            pairs,
            dev_pairs,
            seed,
            max_length,
            args.process_index,
            args.world_size,
        )
        if a.normalize != "none" and a.stats == "base":
            setup.stats = base_stats(
                model,
                tokenizer,
                pairs,
                setup.layers,
                a.pool,
                setup.special_ids,
                max_length,
                a.stats_pairs,
                seed,
            )
    return setup


# ---------------------------------------------------------------------- a `midalign train` run


def prepare_alignment(
    c: TrainConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    resume_from: Path | None,
) -> tuple[AlignSetup | None, dict[str, int], dict[str, float] | None]:
    """The alignment loss's setup, the training pairs per language and the auto layer's
    retrieval by layer; ``None, {}, None`` without alignment. Called before LoRA is attached:
    ``layers: auto`` and ``stats: base`` measure the base model. A task-only run with
    alignment data gets a setup too, so that it logs the dev alignment loss."""
    schedule = c.align.schedule
    if schedule == "task" and not (c.data.align_data and c.data.align_langs):
        return None, {}, None
    pairs = load_pairs(
        c.data.align_data,
        c.data.align_langs,
        c.data.align_split,
        c.data.align_max_pairs,
        c.data.align_pivot,
        tokenizer,
        c.data.align_max_length,
    )
    pairs, dev_pairs = split_dev(pairs, c.data.align_dev_pairs, c.optim.seed)
    pair_counts = {lang: len(items) for lang, items in pairs.items()}
    align, auto_retrieval = align_setup(
        c.align,
        model,
        tokenizer,
        pairs,
        dev_pairs,
        c.optim.seed,
        c.data.align_max_length,
        layers_option="--align-layers",
    )
    log.info(
        "alignment: layers %s, pairs per language %s, %d dev batches",
        align.layers,
        pair_counts,
        len(align.dev_batches),
    )
    if c.align.normalize != "none" and c.align.stats == "base":
        align.stats = base_statistics(
            c, model, tokenizer, pairs, align.layers, align.special_ids, resume_from
        )
    return align, pair_counts, auto_retrieval


def base_statistics(
    c: TrainConfig,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Pairs,
    layers: list[int],
    special: list[int],
    resume_from: Path | None,
) -> Stats:
    """The base model's (μ, σ) for ``align.stats: base``: loaded from the checkpoint a run
    resumes from (or its run directory), computed otherwise
    (:mod:`midalign.training.align_stats`)."""
    if resume_from is not None:
        for path in (resume_from / STATS_FILE, resume_from.parent.parent / STATS_FILE):
            if path.is_file():
                log.info("alignment statistics from %s", path)
                return load_stats(path, layers)
        log.warning("no %s to resume with: computing the statistics again", STATS_FILE)
    log.info(
        "alignment statistics of the base model: layers %s, up to %d pairs per language",
        layers,
        c.align.stats_pairs,
    )
    return base_stats(
        model,
        tokenizer,
        pairs,
        layers,
        c.align.pool,
        special,
        c.data.align_max_length,
        c.align.stats_pairs,
        c.optim.seed,
    )


def distribute_alignment(
    c: TrainConfig, align: AlignSetup | None, args: TrainingArguments, out: Path
) -> list[Path]:
    """Once the Trainer's arguments know this process: its slice of the alignment stream, and
    rank 0's base statistics, saved in the run folder. Returns the files every checkpoint must
    copy (the statistics, so that a resume normalises as the run did)."""
    if align is not None and args.world_size > 1:  # each rank trains on its slice
        align.stream = AlignStream(
            align.stream.pairs,
            c.align.batch_pairs,
            c.optim.seed,
            args.process_index,
            args.world_size,
        )
    if align is None or align.stats is None:
        return []
    if args.world_size > 1:  # every rank computed them; all use rank 0's, bit for bit
        align.stats = broadcast_stats(align.stats, args.device)
    if args.should_save:
        info = {
            "model": c.model.name,
            "pool": c.align.pool,
            "final_norm": "false",
            "pairs_per_language": str(c.align.stats_pairs),
        }
        save_stats(out / STATS_FILE, align.stats, align.layers, info)
    return [out / STATS_FILE]
