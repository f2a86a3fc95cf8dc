"""A compiled forward for the decoder layers (``--compile``, ``model.compile``), where it pays.

For the duration of a piece of work (a probe's extraction, a training run) each decoder layer's
``forward`` is replaced by ``torch.compile(forward, dynamic=True)`` and put back afterwards. The
modules, their weights, their state_dict and their hooks are untouched: the probe pools each
layer by a forward hook, which keeps running eagerly around the compiled forward; the early-exit
forward (:func:`midalign.modeling.forward.pooled_states`) still stops after the last layer it needs.
Inductor fuses the element-wise work between the matmuls (Gemma 3's four float32 RMSNorms a
layer and their casts, GeGLU, the residual adds), which a bf16 forward spends much of its time
on where matmuls are fast (docs/benchmarks.md: 28 % of bf16 time on an AVX512-BF16 EPYC, 53 %
on an AMX Xeon). Shapes are dynamic from the first call, so one graph serves every batch size
and length (a batch of one row, which dynamo specialises, is one graph more); Gemma 3's
alternating sliding and full attention layers are a second graph. Recompiles are bounded by
dynamo's ``recompile_limit``.

``on`` compiles; ``off`` runs eagerly; ``auto`` compiles where a short measurement on this
machine shows a gain of at least :data:`MIN_GAIN`: a forward (and, for training, its backward)
of 16 × 64 random tokens, eager then compiled, best of three each. The decision is kept per
machine, torch version, model shape, dtype and work in midalign's cache
(``compile/decisions.json``), so one machine decides once and every later run does the same
thing, as a step of the runner must to give the same predictions again. A float32 forward on
a CPU is matmul-bound (``mm`` 77 % of its time, docs/benchmarks.md) and compiling it gained
1.04–1.11× (alignment micro-batch, task micro-batch, probe; AMD EPYC, compile_speed.py), about
the noise of a short measurement: ``auto`` leaves it eager without measuring, so that machines
do not flip between the two on noise. A model spread over devices by ``--device-map`` runs its
layers through accelerate's hooks, which dynamo does not trace: it stays eager (``on`` is
refused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from midalign.cache import cache_dir, check_writable
from midalign.errors import InputError
from midalign.modeling.dtypes import cpu_name
from midalign.modeling.layers import decoder_layers, input_device, unwrap

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")
MIN_GAIN = 1.10
"""``auto`` compiles where the compiled sample runs at least this many times as fast."""
SAMPLE_SHAPE = (16, 64)  # rows × tokens of auto's measurement: one probe batch of 1,024 tokens
REPEATS = 3
RECOMPILE_LIMIT = 32
"""Graphs a layer's forward may compile (dynamo's default, 8, is shared by every model class
whose layers use transformers' checkpointing wrapper, and one run needs several: inference and
training graphs, sliding and full attention, a batch of one row); beyond it the layer runs
eagerly, with dynamo's warning."""


@dataclass
class Compiled:
    """What ``--compile`` did: ``on`` whether the layers ran compiled, and why; for a
    measurement, the sample's best eager and compiled seconds and the first compiled call's
    seconds beyond a compiled run (compiling); for ``on``, that first call's seconds."""

    mode: str
    on: bool
    reason: str
    eager_seconds: float | None = None
    compiled_seconds: float | None = None
    compile_seconds: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def check_mode(mode: str, option: str = "--compile") -> None:
    if mode not in COMPILE_MODES:
        raise InputError(f"{option} must be one of {', '.join(COMPILE_MODES)}, not {mode!r}")


def _placed(model: nn.Module) -> bool:
    """Whether accelerate's hooks run the layers (``--device-map``)."""
    return any(hasattr(layer, "_hf_hook") for layer in decoder_layers(model))


def _bf16_work(model: nn.Module, autocast: bool) -> bool:
    return autocast or next(unwrap(model).parameters()).dtype in (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def compiled_layers(
    model: nn.Module,
    mode: str = "off",
    *,
    train: bool = False,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    option: str = "--compile",
) -> Iterator[Compiled]:
    """Run the body with ``model``'s decoder layers compiled (or not, as ``mode`` decides):
    yields the :class:`Compiled` decision. ``train``: the work backpropagates (auto measures a
    backward too); ``autocast``: the context the work's forwards run in (bf16 mixed-precision
    training), which auto measures under."""
    check_mode(mode, option)
    if mode == "off":
        yield Compiled(mode, False, "off as requested")
        return
    device = input_device(model)
    autocast_on = False
    if autocast is not None:
        with autocast():
            autocast_on = torch.is_autocast_enabled(device.type)
    if mode == "auto" and device.type == "cpu" and not _bf16_work(model, autocast_on):
        yield Compiled(mode, False, "float32 on a CPU is matmul-bound: left eager unmeasured")
        return
    if _placed(model):
        if mode == "on":
            raise InputError(f"{option} on: a model spread by --device-map runs eagerly")
        yield Compiled(mode, False, "the layers run through --device-map's hooks")
        return
    sample = _sample(model, train, autocast)
    if mode == "on":
        with _swapped(model):
            decision = Compiled(mode, True, "on as requested", compile_seconds=_seconds(sample))
            _report(decision)
            yield decision
        return
    key = _key(model, train, autocast_on)
    known = _decisions().get(key)
    if known is not None:
        decision = Compiled(**{**known, "mode": mode})
        decision.reason += " (measured before on this machine)"
    else:
        decision = _measure(model, sample, mode)
        _remember(key, decision)
    _report(decision)
    if not decision.on:
        yield decision
        return
    with _swapped(model):
        yield decision


def _report(decision: Compiled) -> None:
    compiling = decision.compile_seconds
    log.info(
        "compile %s: %s (%s)%s",
        decision.mode,
        "compiled layers" if decision.on else "eager",
        decision.reason,
        f"; compiling took {compiling:.1f} s" if compiling is not None else "",
    )


@contextlib.contextmanager
def _swapped(model: nn.Module) -> Iterator[None]:
    """Each decoder layer's ``forward`` compiled for the body, its own put back after."""
    layers = list(decoder_layers(model))
    own = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    try:
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        for layer, forward in zip(layers, own, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def _sample(
    model: nn.Module,
    train: bool,
    autocast: Callable[[], contextlib.AbstractContextManager] | None,
) -> Callable[[], None]:
    """One forward of SAMPLE_SHAPE random tokens through every layer (and a backward into the
    trainable weights for ``train``), leaving the model's gradients and the random streams as
    they were (dropout draws on the training path)."""
    from midalign.modeling.forward import pooled_states

    inner = unwrap(model)
    device = input_device(model)
    generator = torch.Generator().manual_seed(0)
    vocab = inner.get_input_embeddings().num_embeddings
    ids = torch.randint(vocab, SAMPLE_SHAPE, generator=generator).to(device)
    mask = torch.ones_like(ids)
    last = len(decoder_layers(model))
    trainable = [p for p in model.parameters() if p.requires_grad]

    def run() -> None:
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if train:
                grads = [p.grad for p in trainable]
                for p in trainable:  # backward would add into the run's own gradients
                    p.grad = None
                with autocast() if autocast is not None else contextlib.nullcontext():
                    pooled = pooled_states(model, ids, mask, [last], final_norm=False)
                pooled.float().square().mean().backward()
                for p, grad in zip(trainable, grads, strict=True):
                    p.grad = grad
            else:
                with torch.inference_mode():
                    pooled_states(model, ids, mask, [last], final_norm=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _measure(model: nn.Module, sample: Callable[[], None], mode: str) -> Compiled:
    """The sample eager (best of REPEATS after a warm-up) and compiled (best of REPEATS after
    its first, compiling call)."""
    _seconds(sample)
    eager = min(_seconds(sample) for _ in range(REPEATS))
    with _swapped(model):
        first = _seconds(sample)
        compiled = min(_seconds(sample) for _ in range(REPEATS))
    gain = eager / compiled
    on = gain >= MIN_GAIN
    reason = (
        f"measured {gain:.2f}× on a {SAMPLE_SHAPE[0]}×{SAMPLE_SHAPE[1]}-token sample, "
        f"{'at least' if on else 'under'} {MIN_GAIN:.2f}×"
    )
    return Compiled(mode, on, reason, eager, compiled, max(first - compiled, 0.0))


DECISIONS = "decisions.json"


def _key(model: nn.Module, train: bool, autocast: bool) -> str:
    """What a measurement holds for: this machine, torch, the model's shape and dtype, the work."""
    inner = unwrap(model)
    device = input_device(model)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    config = inner.config
    return "|".join(
        str(part)
        for part in (
            where,
            f"torch {torch.__version__}",
            type(inner).__name__,
            getattr(config, "hidden_size", "?"),
            len(decoder_layers(model)),
            str(next(inner.parameters()).dtype).removeprefix("torch."),
            "bf16 autocast" if autocast else "no autocast",
            "train" if train else "inference",
        )
    )


def _decisions() -> dict[str, dict]:
    path = cache_dir("compile") / DECISIONS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _remember(key: str, decision: Compiled) -> None:
    """Add a decision to the cache file (written whole to a temp file, then renamed)."""
    folder = cache_dir("compile")
    check_writable(folder)
    decisions = {**_decisions(), key: decision.as_dict()}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(decisions, f, indent=1, ensure_ascii=False)
    os.replace(tmp, folder / DECISIONS)
