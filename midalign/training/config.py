"""The configuration of a `midalign train` run: one dataclass per concern, YAML in and out.

The sections are read by :mod:`midalign.sections`, the mechanism recipes use too: every field
carries its help text in ``metadata["help"]``, as PEFT's configs do, and its type says what it
takes (a ``Literal`` for a choice). The CLI builds one ``--section.field`` option per field from
it (and ``--field`` where the name is unique, or a short alias such as ``--model``), so
``midalign train --help`` documents every knob a recipe can set. Precedence: dataclass
defaults < ``--config`` YAML < command-line options. The resolved config is written to the run
directory as ``config.yaml`` and is what ``--resume`` compares. Each section's ``check`` refuses
values that cannot work on their own; :func:`midalign.training.config_checks.validate` adds the
rules across sections. Defaults follow the paper (Liu & Niehues 2025, App. D.1; docs/design.md §2)
in the loss, LoRA and the optimiser, with three exceptions: ``align.pool`` is ``mean`` (content
tokens; the authors' code averages every token, ``mean-all``, which on small models mixes in the
attention sink at BOS), and ``align.batch_pairs`` 16 and ``optim.batch_size`` 8 (the paper: 32 per
micro-batch, 128 an optimizer step, on GPUs). recipes/train/paper_alternate.yaml is the paper's
setup as a whole."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from midalign import sections
from midalign.data.reading import read_yaml
from midalign.errors import InputError

Schedule = Literal["alternate", "alternate-steps", "joint", "task", "align"]
Normalize = Literal[
    "none", "center", "standardize"
]  # midalign.training.losses.NORMALIZE (torch-free)
Stats = Literal["batch", "base"]
Pool = Literal["mean", "mean-all"]
ModelDtype = Literal["float32", "bfloat16", "float16", "float64"]
AlignPivot = Literal["english", "all"]  # midalign.data.pairs.PIVOTS (torch-free)
Compile = Literal["auto", "on", "off"]  # midalign.modeling.compiled.COMPILE_MODES (torch-free)
BestMetric = Literal["auto", "task_loss", "align_loss"]
SCHEDULES = typing.get_args(Schedule)
NORMALIZE = typing.get_args(Normalize)
STATS = typing.get_args(Stats)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
Name, Error = sections.Name, sections.Error
_help = sections.setting


@dataclass
class ModelConfig:
    name: str = _help(
        "base model: default (Gemma 3 270M, offline), an HF folder, a .gguf file or a hub id",
        default="default",
    )
    dtype: ModelDtype = _help(
        "weights dtype: float32 (CPU), bfloat16, float16 (on a GPU only: on a CPU its "
        "activations overflow to NaN) or float64 (exact reference runs)",
        default="float32",
    )
    compile: Compile = _help(
        "torch.compile the decoder layers for training: on, off, or auto (on where a short "
        "measurement on this machine, kept in the cache, shows a gain of at least 1.1x; float32 "
        "on a CPU stays eager). Off by default: on an AMD EPYC a micro-batch gained 1.04-1.20x "
        "(a bf16 task micro-batch 0.97x), less than compiling costs a short run",
        default="off",
    )


@dataclass
class LoraSettings:
    r: int = _help("LoRA rank", default=8)
    alpha: int = _help("LoRA scaling numerator (update scaled by alpha / r)", default=16)
    dropout: float = _help("dropout on the LoRA input", default=0.1)
    target_modules: list[str] = _help(
        "projections that get a LoRA adapter (comma-separated on the command line)",
        default_factory=lambda: list(LORA_TARGETS),
    )

    def check(self, name: Name, error: Error) -> None:
        sections.positive(name, error, self, "r", "alpha")  # alpha 0 scales the update to 0
        if not 0 <= self.dropout < 1:
            raise error(f"{name('dropout')} must be in [0, 1)")
        if not self.target_modules:
            raise error(f"{name('target_modules')}: give at least one projection")


@dataclass
class DataConfig:
    task_data: str | None = _help(
        "training examples, jsonl: {system?, prompt, response, lang?, id?} or {messages: [...]}",
        default=None,
    )
    dev_data: str | None = _help(
        "dev examples (same format); evaluated every eval_steps for the dev task loss",
        default=None,
    )
    max_length: int = _help(
        "longest task example in tokens; longer ones are cut at the end (and counted)",
        default=512,
    )
    align_data: str | None = _help(
        "parallel text for the alignment loss: tatoeba:DIR, sib200:DIR, flores:DIR, udhr, "
        "parallel:FILE,FILE,..., alma:DIR (ALMA training pairs), hf-tatoeba (hub "
        "sentence-transformers/parallel-sentences-tatoeba) or hf-tatoeba:DIR (a copy of it)",
        default=None,
    )
    align_langs: list[str] = _help(
        "non-English languages paired with English for alignment (comma-separated codes); "
        "with align_pivot all, the languages every one of which is paired with every other",
        default_factory=list,
    )
    align_pivot: AlignPivot = _help(
        "english: every alignment pair is x-English (the paper's main setup); all: every "
        "ordered pair of align_langs, English among them if listed, from a multiway source "
        "(sib200, flores, udhr: the same sentences in every language), the paper's all-to-all "
        "alignment (its Table 4)",
        default="english",
    )
    align_split: str = _help("split of flores/sib200 alignment data", default="dev")
    align_max_pairs: int | None = _help(
        "use at most this many pairs per language (first ones, after filtering)", default=None
    )
    align_dev_pairs: int = _help(
        "pairs per language held out (fixed sample) for the dev alignment loss", default=32
    )
    align_max_length: int = _help("longest alignment sentence in tokens", default=128)

    def check(self, name: Name, error: Error) -> None:
        from midalign.languages import to_flores

        for lang in self.align_langs:
            try:
                to_flores(lang)
            except InputError as e:
                raise error(f"{name('align_langs')}: {e}") from None
        sections.positive(name, error, self, "max_length", "align_max_length", "align_max_pairs")


@dataclass
class AlignConfig:
    schedule: Schedule = _help(
        "alternate (task and alignment micro-batches in turn within every optimizer step, as "
        "the paper's code does), alternate-steps (whole optimizer steps of each objective in "
        "turn, each with the full effective batch, as the paper's text reads), joint "
        "(task + weight·align every micro-batch), task (plain SFT), align (alignment only)",
        default="alternate",
    )
    layers: str = _help(
        "alignment layer(s): middle (L // 2), auto (the base model's peak-retrieval layer on "
        "the alignment pairs), or integers such as 9 or 9,18 (losses averaged)",
        default="middle",
    )
    temperature: float = _help("InfoNCE temperature τ (paper: 0.1 Llama, 1.5 Qwen)", default=0.1)
    pool: Pool = _help(
        "mean: content tokens only (BOS/EOS excluded); mean-all: every token, as the paper's code",
        default="mean",
    )
    normalize: Normalize = _help(
        "per-dimension normalisation of the pooled states before the cosine: none (the paper), "
        "center (subtract the mean) or standardize (also divide by the standard deviation); "
        "for models whose few huge dimensions make every cosine ≈ 1",
        default="none",
    )
    stats: Stats = _help(
        "statistics of center/standardize: batch (of the current 2B rows x ∪ y, over every "
        "rank with gather_negatives) or base (of the base model on the alignment training "
        "pairs, computed once before training and saved as align_stats.safetensors)",
        default="batch",
    )
    stats_pairs: int = _help(
        "pairs per language (a seeded sample) the base statistics are computed on", default=256
    )
    symmetric: bool = _help("add the English→x direction to the loss", default=False)
    weight: float = _help("λ of the joint schedule: loss = task + λ·align", default=1.0)
    batch_pairs: int = _help(
        "parallel pairs per alignment micro-batch and process (B; 2B rows)", default=16
    )
    gather_negatives: bool = _help(
        "with several processes: all-gather the English sides of every rank with gradient, so "
        "each rank's InfoNCE denominator holds the global batch (W·B negatives), as one process "
        "holding the whole batch computes it (and the batch statistics of normalize, too)",
        default=False,
    )
    auto_pairs: int = _help("pairs per language the auto layer choice probes", default=100)
    matched: bool = _help(
        "alternate: each loss is divided by the G task micro-batches of the step, so the task "
        "gradient is plain SFT's and the alignment gradient is added on top; false: by all 2G "
        "micro-batches of both kinds, as the paper's code does (each loss halved). Either way "
        "the task side (examples, order, optimizer steps, batch, schedule) is SFT's",
        default=False,
    )

    def check(self, name: Name, error: Error) -> None:
        if not self.temperature > 0:  # NaN too
            raise error(f"{name('temperature')} must be positive, not {self.temperature}")
        sections.positive(name, error, self, "stats_pairs", "auto_pairs")
        if self.schedule != "task" and self.batch_pairs < 2:
            raise error(f"{name('batch_pairs')} must be at least 2 (in-batch negatives)")
        if not self.weight >= 0:
            raise error(f"{name('weight')} must be non-negative, not {self.weight}")
        if self.matched and self.schedule == "alternate-steps":
            raise error(
                f"{name('matched')}: alternate-steps has no matched form (its alignment steps "
                "are optimizer steps of their own, which move the learning-rate schedule); "
                "use schedule alternate"
            )


@dataclass
class OptimConfig:
    learning_rate: float = _help("peak learning rate (AdamW)", default=5e-4)
    lr_scheduler: str = _help("transformers lr_scheduler_type", default="inverse_sqrt")
    warmup_ratio: float = _help("share of the optimizer steps spent warming up", default=0.03)
    weight_decay: float = _help("AdamW weight decay", default=0.0)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", default=1.0)
    epochs: float = _help("passes over the task data (at most)", default=5.0)
    max_steps: int = _help(
        "optimizer steps, overriding epochs (required by the align schedule); -1: count in epochs",
        default=-1,
    )
    batch_size: int = _help("task examples per micro-batch and process", default=8)
    gradient_accumulation_steps: int = _help(
        "micro-batches the Trainer accumulates per optimizer step, as in transformers and TRL: "
        "task micro-batches (alternate and joint: each brings one alignment micro-batch; "
        "alternate-steps: G of the step's kind; align: G alignment micro-batches)",
        default=4,
    )
    eval_steps: int = _help("evaluate (dev task and alignment losses) every N steps", default=200)
    save_steps: int = _help("checkpoint every N steps (a multiple of eval_steps)", default=200)
    logging_steps: int = _help("log training losses every N steps", default=10)
    early_stopping_patience: int = _help(
        "stop after N evaluations without improvement (0 = never stop early)", default=5
    )
    metric_for_best_model: BestMetric = _help(
        "dev metric that picks the best checkpoint: task_loss, align_loss, or auto "
        "(task_loss, or align_loss for the align schedule)",
        default="auto",
    )
    keep_checkpoints: int = _help("checkpoints kept besides the best one", default=2)
    seed: int = _help("seed of LoRA init, data order, dropout and the alignment stream", default=42)
    data_order: str = _help(
        "where the task examples' order comes from: global (the process's random stream, which "
        "dropout in alignment forwards also draws from, so from the second epoch on a run "
        "with alignment sees another order than SFT) or seeded (a generator of its own, "
        "seeded by seed: every system sees the task examples in the same order, every epoch)",
        default="global",
    )
    bf16: str = _help(
        "bf16 mixed precision (autocast; weights, gradients and optimizer state stay float32): "
        "auto (on where bf16 matmuls are native: a CUDA GPU with bf16, a CPU with AMX or "
        "AVX512-BF16; off elsewhere, where bf16 is emulated and slower than float32, and for "
        "weights other than float32), true or false",
        default="auto",
    )
    report_to: list[str] = _help(
        "extra loggers for transformers (tensorboard, wandb, ...); log.jsonl is always written",
        default_factory=list,
    )

    def check(self, name: Name, error: Error) -> None:
        from midalign.training.warmup import no_learning, no_learning_message

        sections.positive(
            name, error, self, "batch_size", "gradient_accumulation_steps", "eval_steps",
            "save_steps", "logging_steps",
        )  # fmt: skip
        if not self.learning_rate > 0:
            raise error(f"{name('learning_rate')} must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise error(f"{name('warmup_ratio')} must be in [0, 1)")
        # before the warm-up rule, which would blame the warm-up for a run of no steps
        if self.max_steps == 0 or self.max_steps < -1:
            raise error(
                f"{name('max_steps')} must be positive, or -1 to count in {name('epochs')}, "
                f"not {self.max_steps}"
            )
        if not math.isfinite(self.epochs) or (self.max_steps < 0 and self.epochs <= 0):
            raise error(
                f"{name('epochs')} must be a positive number of passes over the task data, "
                f"not {self.epochs:g} (or give {name('max_steps')})"
            )
        if self.max_steps > 0 and no_learning(self.lr_scheduler, self.warmup_ratio, self.max_steps):
            raise error(
                no_learning_message(
                    self.lr_scheduler,
                    self.warmup_ratio,
                    self.max_steps,
                    name("warmup_ratio"),
                    f"{name('max_steps')} {self.max_steps}",
                )
            )
        if self.save_steps % self.eval_steps:
            raise error(
                f"{name('save_steps')} ({self.save_steps}) must be a multiple of "
                f"{name('eval_steps')} ({self.eval_steps}): the best checkpoint is chosen at "
                "evaluations"
            )
        if not 0 <= self.seed < 2**32:  # numpy's seeds, which transformers' set_seed sets too
            raise error(f"{name('seed')} must be in 0..{2**32 - 1}, not {self.seed}")
        from transformers.trainer_utils import SchedulerType

        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedulers:
            raise error(
                f"{name('lr_scheduler')} must be one of {', '.join(schedulers)}, "
                f"not {self.lr_scheduler!r}"
            )
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        loggers = sorted(INTEGRATION_TO_CALLBACK)
        unknown = [x for x in self.report_to if x not in (*loggers, "all", "none")]
        if unknown:
            raise error(
                f"{name('report_to')}: {unknown[0]!r} is not a logger transformers knows "
                f"({', '.join(loggers)}, all, none)"
            )
        if self.data_order not in ("global", "seeded"):
            raise error(f"{name('data_order')} must be global or seeded, not {self.data_order!r}")
        if str(self.bf16).lower() not in ("auto", "true", "false"):  # YAML's true: True
            raise error(f"{name('bf16')} must be one of auto, true, false, not {self.bf16!r}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraSettings,
    "data": DataConfig,
    "align": AlignConfig,
    "optim": OptimConfig,
}
# Short options the issue and docs/train.md use, where the field name alone would be ambiguous
# or vague.
ALIASES = {
    "model.name": "--model",
    "align.layers": "--align-layers",
    "align.weight": "--align-weight",
    "align.batch_pairs": "--align-batch-pairs",
    "align.gather_negatives": "--gather-negatives",
    "align.stats": "--align-stats",
    "align.stats_pairs": "--align-stats-pairs",
    "align.matched": "--align-matched",
    "lora.r": "--lora-r",
    "lora.alpha": "--lora-alpha",
    "lora.dropout": "--lora-dropout",
}


def from_dict(values: dict[str, Any], where: str, prefix: str = "") -> TrainConfig:
    """A config from nested ``{section: {field: value}}``; unknown keys are errors, naming the
    field as ``{where}: {prefix}section.field`` (a recipe's prefix is ``train.``)."""
    return sections.read(TrainConfig, values, where, prefix.rstrip("."))


def load_config(path: Path) -> TrainConfig:
    """A recipe file: YAML sections model, lora, data, align, optim (all optional)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--config: {path} not found")
    return from_dict(read_yaml(path) or {}, str(path))


def option_names() -> dict[str, list[str]]:
    """``section.field`` -> its command-line option strings."""
    counts: dict[str, int] = {}
    for cls in SECTIONS.values():
        for f in fields(cls):
            counts[f.name] = counts.get(f.name, 0) + 1
    names: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            key = f"{section}.{f.name}"
            options = [f"--{key}"]
            if key in ALIASES:
                options.insert(0, ALIASES[key])
            elif counts[f.name] == 1 and f.name not in ("name",):
                options.insert(0, "--" + f.name.replace("_", "-"))
            names[key] = options
    return names


def field_help(key: str) -> tuple[str, Any]:
    """Help text and default of ``section.field``."""
    section, name = key.split(".")
    f = next(f for f in fields(SECTIONS[section]) if f.name == name)
    default = getattr(SECTIONS[section](), name)
    return f.metadata["help"], default


def apply_overrides(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """Command-line values (``section.field`` -> text) on top of ``config``."""
    for key, text in overrides.items():
        section, name = key.split(".")
        sections.set_text(getattr(config, section), name, text, option_names()[key][0])
    return config


def diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    """``section.field`` keys whose values differ between two configs."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in da for k in da[s] if da[s][k] != db[s].get(k)]
