"""Shared by the A/B tools (inductor_merge_ab.py, dito_state_ab.py): two forms of one variant and dense, timed in
one interleaved loop (alternating order each repeat), reported as medians and the per-repeat ratio."""
from __future__ import annotations

import statistics
import time


def time_interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """{name: [seconds per call, one per repeat]}; the order of the calls alternates between repeats."""
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k in (list(fns) if r % 2 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def report(times: dict, outs: dict, a: str, b: str, label: str = "") -> None:
    """Print each form's median, the median per-repeat ratio a / b, each form's speedup over `dense` and the
    largest difference between the two forms' outputs."""
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:9s} {1e3 * v:8.1f} ms per call (median of {len(times[k])})")
    ratio = statistics.median(x / y for x, y in zip(times[a], times[b]))
    print(f"{label}{a} / {b} per repeat: {ratio:.3f}; per-call speedup over dense: {a} {med['dense'] / med[a]:.2f}x, "
          f"{b} {med['dense'] / med[b]:.2f}x; max |{a} - {b}| {(outs[a] - outs[b]).abs().max().item():.1e}")
