"""Wall time by interleaved repeats: every repeat runs each timed function once, in an order rotated by
the repeat index, so drift (thermal, other processes) hits every function alike. Speedups are computed
per repeat from times measured in the same repeat of the same process, then summarised (median, min,
max). On a CUDA device each call is timed by CUDA events recorded around it on the current stream and
read after a synchronize (the GPU's time of the call, launch overhead included, queueing of earlier work
excluded)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from .progress import progress_bar


def clock(device: str = "cpu") -> str:
    return "cuda events" if str(device).startswith("cuda") else "time.perf_counter"


def _timer(device: str):
    """A function timing one call fn() in seconds: CUDA events on a CUDA device, else perf_counter."""
    if str(device).startswith("cuda"):
        def timed(fn) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return timed

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return timed


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                      desc: str = "timing", device: str = "cpu") -> dict[str, list[float]]:
    """{name: [seconds per repeat]}; `warmup` untimed rounds first (capture, rewrite, compile, caches)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(fns)
    timed = _timer(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for _ in range(warmup):
            for n in names:
                fns[n]()
        for r in progress_bar(range(repeats), desc=desc, leave=False):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                times[n].append(timed(fns[n]))
    return times


def stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def per_repeat_speedups(dense: list[float], reduced: list[float]) -> list[float]:
    """dense_i / reduced_i for each repeat i (same repeat, same process)."""
    if len(dense) != len(reduced):
        raise ValueError("dense and reduced need the same number of repeats")
    return [d / r for d, r in zip(dense, reduced)]


def run_speedups(dense: list[float], variant_times: list[list[float]], per_step: list[int]) -> list[float]:
    """Speedup of a whole run of len(per_step) steps, per repeat: steps × dense_i / Σ_s t_i[variant(s)]."""
    out = []
    for i, d in enumerate(dense):
        total = sum(variant_times[v][i] for v in per_step)
        out.append(len(per_step) * d / total)
    return out
