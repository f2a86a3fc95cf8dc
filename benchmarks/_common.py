"""Helpers the side-by-side benchmarks share: a quiet machine, a matmul roofline, SIB-200 text.

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

REPO = Path(__file__).resolve().parents[1]
SIB200 = REPO.parent / "shared" / "data" / "sib200"


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


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
