"""Which torch dtype ``--dtype`` means on this machine, and whether ``optim.bf16`` trains in
bf16 mixed precision here.

``auto`` is bfloat16 where bf16 matmuls run natively (a CUDA device, a CPU with AMX or
AVX512-BF16), float32 elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from midalign.errors import InputError

log = logging.getLogger(__name__)

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
BF16_CHOICES = ("auto", "true", "false")
"""``optim.bf16`` of a training run: ``auto`` is bf16 mixed precision where bf16 is native."""
CPUINFO = Path("/proc/cpuinfo")
_reported: set[str] = set()  # the auto resolutions already logged by this process


def cpu_name() -> str:
    """The CPU's ``model name`` as /proc/cpuinfo gives it ("unknown" where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


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


def resolve_bf16(setting: str | bool, weights: torch.dtype = torch.float32) -> tuple[bool, str]:
    """Whether a training run uses bf16 mixed precision (``optim.bf16``), and why.

    Mixed precision keeps the weights, gradients and optimizer state in float32 and runs the
    forward under autocast (matmuls in bf16). ``auto`` turns it on where ``--dtype auto`` would
    pick bfloat16 (:func:`resolve_dtype`: a CUDA device with native bf16, a CPU with AMX or
    AVX512-BF16) and the weights are float32: float64 weights are for exact reference runs and
    bf16 weights have nothing to mix. ``true`` and ``false`` are taken as they are.
    """
    value = str(setting).lower()
    if value not in BF16_CHOICES:
        raise InputError(f"optim.bf16 must be one of {', '.join(BF16_CHOICES)}, not {setting!r}")
    if value != "auto":
        return value == "true", "as requested"
    if weights != torch.float32:
        return False, f"the weights are {dtype_name(weights)}"
    dtype, reason = resolve_dtype("auto")
    return dtype == torch.bfloat16, reason
