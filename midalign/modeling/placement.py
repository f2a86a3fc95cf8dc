"""Where a model bigger than one device goes (``--device-map`` and its companions).

The options (``--device-map``, ``--max-memory``, ``--offload-folder``) read and checked,
accelerate's ``from_pretrained`` arguments, and the device an offloaded module computes on.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from midalign.errors import InputError
from midalign.files import unwritable

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
    if folder is not None:
        _check_offload_folder(Path(folder))
    return Placement(strategy, budget, folder)


def _check_offload_folder(folder: Path) -> None:
    """A folder, or a place one can be made, that takes writes: transformers would otherwise
    fail inside the model's loading, its error read as one about the model."""
    option = "--offload-folder"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option}: {folder} is a file; give a folder (made if missing)")
    problem = unwritable(folder)
    if problem is not None:
        raise InputError(f"{option}: cannot use {folder}: {problem}")


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


def check_map(model: nn.Module, mapping: dict[str, int | str]) -> None:
    """A ``--device-map`` file against the model it places (``model`` may be a skeleton on
    meta): every key a module of it, every weight (parameter or saved buffer) on a device.

    A key covers its submodules (``""`` the whole model). accelerate checks coverage only when
    the map spans several devices; a map onto one device, ``{"model.layers.0": "cpu"}``,
    would load the modules it leaves out onto the CPU, outside the map and without hooks (on a
    GPU, half a model on each device, failing at the first forward)."""
    modules = dict(model.named_modules())
    unknown = [key for key in mapping if key not in modules]
    if unknown:
        raise InputError(
            f"--device-map: this model has no module {unknown[0]!r} (names as "
            "model.named_modules() gives them, e.g. model.layers.0)"
        )
    left = unplaced(list(model.state_dict()), mapping)
    if left:
        more = f" and {len(left) - 8} more" if len(left) > 8 else ""
        raise InputError(
            f"--device-map: the map leaves out {', '.join(left[:8])}{more}; every module with "
            "weights needs a device (an entry places its submodules too)"
        )


def unplaced(weights: list[str], mapping: dict[str, int | str]) -> list[str]:
    """The topmost modules of ``weights`` (state-dict names) whose weights ``mapping`` places
    none of, in model order: ``model.layers.1`` rather than each of its weights."""

    def inside(name: str, prefix: str) -> bool:
        return prefix == "" or name == prefix or name.startswith(prefix + ".")

    placed = [w for w in weights if any(inside(w, key) for key in mapping)]
    left = []
    for weight in weights:
        if weight in placed:
            continue
        parts = weight.split(".")
        prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
        left.append(next(p for p in prefixes if not any(inside(w, p) for w in placed)))
    return list(dict.fromkeys(left))


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


def placement_kwargs(placement: Placement) -> tuple[dict, tempfile.TemporaryDirectory | None]:
    """``from_pretrained`` arguments for ``placement``, and the temp dir that serves as offload
    folder (for weights transformers must re-save) when it names none: the caller keeps it
    as long as the model. A named folder is made here, where failing names the option
    (transformers would make it inside loading, and fail as "cannot load" the model)."""
    temp = None
    if placement.offload_folder is None:
        temp = tempfile.TemporaryDirectory(prefix="midalign-offload-")
    else:
        try:
            Path(placement.offload_folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(
                f"--offload-folder: cannot create {placement.offload_folder} ({e.strerror})"
            ) from None
    folder = placement.offload_folder or temp.name
    kwargs = {"device_map": placement.device_map, "offload_folder": folder}
    if placement.max_memory is not None:
        kwargs["max_memory"] = placement.max_memory
    return kwargs, temp


def execution_device(module: nn.Module) -> torch.device:
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
