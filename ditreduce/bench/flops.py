"""Whole-model and attention FLOPs of one call, counted by torch.utils.flop_counter.FlopCounterMode.

Attention FLOPs are the counts of the scaled-dot-product ops (on CPU sdpa dispatches to
`_scaled_dot_product_flash_attention_for_cpu`, which the counter has no formula for: it gets sdpa's).
Gathers, the reconstruct's weighted sum and elementwise ops carry no FLOP formula in the counter, so
the whole-model figure is matmuls, convolutions and attention: the cost model the FLOPs-ideal
speedup refers to.
"""
from __future__ import annotations

from ..flops import CUSTOM_FORMULAS, Flops, count_flops  # noqa: F401  (re-exported for the bench)
from ..schedules.ir import MAX_RATIO
from ..schedules.lower import quantise


def attention_exponent(dense: Flops, probe: Flops, ratio: float) -> float:
    """p in attention FLOPs ∝ (1 − r)^p, from a dense run and a probe at `ratio` of a model whose only
    attention is reducible self-attention: p ≈ 2 when queries and keys/values are reduced, ≈ 1 when
    only keys/values are (ToDo-like)."""
    import math

    if not 0 < ratio < 1 or probe.attention <= 0 or dense.attention <= 0:
        raise ValueError(f"probe needs 0 < ratio < 1 and attention FLOPs on both runs, got ratio {ratio}, "
                         f"{dense.attention} → {probe.attention}")
    return math.log(probe.attention / dense.attention) / math.log(1 - ratio)


def matched_ratio(target_fraction: float, exponent: float, ratio_step: float = 0.05) -> float:
    """The ratio whose self-attention FLOPs are `target_fraction` of dense, for a method of this exponent
    (rounded to 1 or 2: q+kv → r = 1 − sqrt(f), kv-only → r = 1 − f), on the schedule's ratio grid."""
    p = 2 if exponent > 1.5 else 1
    r = 1 - target_fraction ** (1 / p)
    return min(max(quantise(r, ratio_step), 0.0), MAX_RATIO)
