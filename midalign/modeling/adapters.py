"""A PEFT adapter folder as files, read so that every fault is one line naming its file.

``midalign merge`` and every ``--adapter`` (probe, eval, a recipe's steps) read adapters through
here. PEFT itself trusts ``adapter_config.json``: an ``r`` that disagrees with the tensors fails
deep in ``load_state_dict`` (or, in a merge, writes a rank no tensor has), a string ``"8"`` fails
in arithmetic, and a truncated safetensors file fails in its Rust reader. Each is caught here,
before any of that runs.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open

from midalign.data.reading import read_json
from midalign.errors import InputError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

# A LoRA factor as PEFT saves it: lora_A/lora_B (linear, conv) or lora_embedding_A/B; the
# rank is the first dimension of A ([r, in, …]) and the second of B ([out, r, …]).
_FACTOR = re.compile(r"^(?P<module>.+)\.lora_(?:embedding_)?(?P<kind>[AB])(?:\.weight)?$")


def read_config(folder: Path, option: str) -> dict:
    """``adapter_config.json`` as a dict; a LoRA config's ``r`` (a positive integer) and
    ``lora_alpha`` (a number) are checked, since everything after trusts them."""
    config_file = Path(folder) / CONFIG
    if not config_file.is_file():
        raise InputError(f"{option}: {config_file} not found (not a PEFT adapter folder)")
    config = read_json(config_file, option)
    if not isinstance(config, dict):
        raise InputError(f"{option}: {config_file}: expected a JSON object")
    if config.get("peft_type") == "LORA":
        check_lora_numbers(config, f"{option}: {config_file}")
    return config


def check_lora_numbers(config: Mapping, where: str) -> None:
    """``r`` a positive integer and ``lora_alpha`` a finite number (JSON's ``"8"`` is text, and
    ``true`` is not 1); ``where`` begins the error line."""
    for field in ("r", "lora_alpha"):
        if field not in config:
            raise InputError(
                f'{where}: no "{field}" (a LoRA config gives its rank r and lora_alpha)'
            )
    r, alpha = config["r"], config["lora_alpha"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise InputError(f'{where}: "r" must be a positive integer, not {r!r}')
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise InputError(f'{where}: "lora_alpha" must be a number, not {alpha!r}')


@contextlib.contextmanager
def open_weights(weights_file: Path, option: str) -> Iterator:
    """``safe_open`` on the adapter's tensors; a file that is not whole safetensors (truncated,
    corrupt, another format) is an error naming it. Its header is checked against the file's
    size on opening, so a truncated file fails here, before any tensor is read."""
    try:
        with safe_open(str(weights_file), "pt") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise InputError(
            f"{option}: {weights_file}: not a readable safetensors file ({e}); is it truncated? "
            "save the adapter again"
        ) from None


def weight_shapes(weights_file: Path, option: str) -> dict[str, list[int]]:
    """Every tensor's shape, from the file's header alone."""
    with open_weights(weights_file, option) as f:
        return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}


def check_rank(
    config: Mapping, shapes: Mapping[str, Sequence[int]], folder: Path, option: str
) -> None:
    """Every LoRA factor has the config's rank ``r``: PEFT builds its layers from the config, so
    a mismatch either fails on loading or, merged, gives a rank that no factor has. Per-module
    ranks (``rank_pattern``) and parameter targets are left to PEFT's own load."""
    if config.get("rank_pattern") or config.get("target_parameters"):
        return
    r = config["r"]
    for key, shape in shapes.items():
        match = _FACTOR.match(key)
        if match is None or len(shape) < 2:
            continue
        rank = shape[0] if match["kind"] == "A" else shape[1]
        if rank != r:
            raise InputError(
                f"{option}: {Path(folder) / WEIGHTS}: {key} has shape {list(shape)} (rank "
                f"{rank}) but {Path(folder) / CONFIG} says r {r}; the config's r must be the "
                "tensors' rank"
            )
