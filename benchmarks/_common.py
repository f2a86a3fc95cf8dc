"""Helpers the side-by-side benchmarks share: what machine ran them, a quiet machine, a matmul
roofline, SIB-200 text.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so this module is imported as
``_common`` from the script's own folder.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from midalign.modeling.dtypes import cpu_name  # the benchmarks import it from here too

REPO = Path(__file__).resolve().parents[1]
SIB200 = REPO.parent / "shared" / "data" / "sib200"


CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")
"""The /proc/cpuinfo flags that decide how fast bf16 and fp32 matmuls can run here."""


def machine(gemm: int = 2048, repeats: int = 3) -> dict:
    """What a figure was measured on, for every benchmark to print and record: the CPU model,
    its bf16/AMX/AVX flags, torch's CPU capability (the kernels it dispatches to), what
    ``--dtype auto`` resolves to here, threads, and the fp32 and bf16 matmul peaks
    (:func:`gemm_gflops`).

    Ratios between machines differ as much as their bf16 support does: a CPU without AMX or
    AVX512-BF16 emulates bf16 matmuls (measured on an AVX2 EPYC: ~1 GFLOP/s against ~90 for
    fp32 on one thread), one with AMX runs them several times faster than fp32.
    """
    from midalign.modeling.dtypes import cpu_bf16_feature, cpu_flags, dtype_name, resolve_dtype

    flags = cpu_flags()
    peaks, sizes = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        name = dtype_name(dtype)
        peaks[name], sizes[name] = gemm_gflops(dtype, gemm, repeats)
    return {
        "cpu": cpu_name(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": cpu_bf16_feature(),
        "dtype_auto": dtype_name(resolve_dtype("auto")[0]),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "matmul_gflops": peaks,
        "matmul_size": sizes,
    }


def gemm_gflops(
    dtype: torch.dtype, size: int = 2048, repeats: int = 3, budget: float = 1.0
) -> tuple[float, int]:
    """GFLOP/s of a square ``size``³ ``torch.matmul`` in ``dtype``, the best of ``repeats``
    after a warm-up, and the size timed. A 512³ product first warms the thread pool and
    estimates the rate; where one ``size``³ product would take over ``budget`` seconds (bf16
    emulated on a CPU without native support) the size is halved until it fits, so that the
    helper takes seconds on any machine, and the size used is returned with the figure."""
    small = min(size, 512)
    a, b = torch.randn(small, small, dtype=dtype), torch.randn(small, small, dtype=dtype)
    start = time.perf_counter()
    torch.matmul(a, b)
    rate = 2 * small**3 / (time.perf_counter() - start)  # FLOP/s, a warm-up's underestimate
    while size > small and 2 * size**3 / rate > budget:
        size //= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up at this size: kernel selection, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return round(2 * size**3 / best / 1e9, 1), size


def print_machine(info: dict) -> None:
    """The :func:`machine` record as two lines at the top of a benchmark's output."""
    flags = " ".join(f"{f}{'+' if v else '-'}" for f, v in info["cpu_flags"].items())
    peaks = ", ".join(
        f"{k} {v:.1f} ({info['matmul_size'][k]}³)" for k, v in info["matmul_gflops"].items()
    )
    print(
        f"{info['cpu']} [{flags}], torch {info['torch']} capability "
        f"{info['torch_cpu_capability']}, {info['torch_threads']} threads of {info['cores']} "
        f"cores, --dtype auto → {info['dtype_auto']}\nmatmul peak: {peaks} GFLOP/s"
    )


def quiet_start(wait: bool = True) -> tuple[float, dict]:
    """The start of a benchmark: wait for a quiet machine (unless ``wait`` is False), then
    take and print the :func:`machine` record; returns the 1-minute load seen and the record."""
    load = wait_for_quiet() if wait else load_1min()
    info = machine()
    print_machine(info)
    return load, info


def load_1min() -> float:
    return os.getloadavg()[0]


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have spent on the machine (user, nice, system, irq, steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def timed(fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, its wall seconds, and the cores other processes kept busy
    meanwhile (machine-wide busy CPU time minus ours, over wall time): 0 on a quiet machine,
    so each figure carries its own evidence of how quiet it was."""
    busy, own, start = _busy_cpu_seconds(), sum(os.times()[:4]), time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    others = (_busy_cpu_seconds() - busy) - (sum(os.times()[:4]) - own)
    return result, seconds, max(others, 0.0) / seconds


def wait_for_quiet(max_load: float = 1.0, max_wait: float = 1200.0, poll: float = 60.0) -> float:
    """Wait until the 1-minute load average is at most ``max_load`` (or ``max_wait`` seconds
    have passed) and return the load seen last.

    The machine's cores are shared with other people's test runs; a timing taken while they
    run measures them, not us. The caller records the load next to its figures either way.
    """
    deadline = time.monotonic() + max_wait
    load = load_1min()
    while load > max_load and time.monotonic() < deadline:
        print(f"1-min load {load:.2f} > {max_load}: waiting {poll:.0f} s for a quiet machine")
        time.sleep(poll)
        load = load_1min()
    return load


def matmul_gflops(
    shapes: Sequence[tuple[int, int]],
    tokens: Sequence[int] = (512, 2048, 8192),
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
) -> float:
    """Peak GFLOP/s of ``torch.matmul`` on [t, in] × [in, out] for the (in, out) ``shapes`` of
    a model's projections, run back to back: the best of ``repeats`` runs at the best row
    count t in ``tokens``. This is the ceiling for a forward made of these projections (the
    row count is the one thing a batching scheme chooses, so the best one is the fair limit).
    Inputs are random; the timing does not depend on the values.
    """
    best = 0.0
    for t in tokens:
        operands = [
            (torch.randn(t, n_in, dtype=dtype), torch.randn(n_in, n_out, dtype=dtype))
            for n_in, n_out in shapes
        ]
        flops = sum(2 * t * n_in * n_out for n_in, n_out in shapes)
        for _ in range(2):  # warm-up: thread pool, kernel selection, caches
            for a, b in operands:
                torch.matmul(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            for a, b in operands:
                torch.matmul(a, b)
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def read_sib200(
    langs: Sequence[str], n: int, split: str = "train", root: Path = SIB200
) -> dict[str, list[str]]:
    """The first ``n`` sentences by index_id of ``split`` for each language: lang -> texts.

    Sentence i is the same FLoRes sentence in every language (checked through index_id).
    """
    texts, ids = {}, {}
    for lang in langs:
        path = root / lang / f"{split}.tsv"
        if not path.is_file():
            raise SystemExit(f"{path} not found (languages are FLoRes codes such as deu_Latn)")
        with path.open(encoding="utf-8", newline="") as f:
            rows = sorted(
                csv.DictReader(f, delimiter="\t"),
                key=lambda row: int(row["index_id"]),
            )[:n]
        texts[lang] = [row["text"] for row in rows]
        ids[lang] = [row["index_id"] for row in rows]
    first = ids[langs[0]]
    for lang in langs:
        if ids[lang] != first:
            raise SystemExit(f"{lang} and {langs[0]} do not share the same index_ids")
    return texts


def profile_ops(fn, top: int) -> list[dict]:
    """``fn()`` once under ``torch.profiler``: its ``top`` ops by self CPU time (all calls of
    an op together, whatever their shapes), each with its calls and its share of all self CPU
    time, so that what is not a matmul shows at a glance."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
            "share": round(e.self_cpu_time_total / total, 4),
        }
        for e in ranked
    ]


def print_ops(title: str, ops: list[dict]) -> None:
    """The table :func:`profile_ops` returns, one op a line."""
    print(f"\n{title}, ops by self CPU time:")
    for op in ops:
        print(f"  {op['share']:6.1%} {op['self_cpu_s']:8.2f} s {op['calls']:7d}×  {op['op']}")
