"""`uniform`: a structured keep-pattern spread evenly over the lattice; a pruned token copies its
nearest kept neighbour. Data-independent, so the selection is a constant of the variant graph."""
from __future__ import annotations

import math
import torch

from ..regions import Selection, identity_selection, regions_forced
from .base import Method, register_method
from .lattice import nearest_kept, static_table


def _bayer(n: int) -> torch.Tensor:
    """Ordered-dither (Bayer) ranks on a 2^n x 2^n tile: any prefix of the ranking is spread evenly."""
    m = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(n):
        m = torch.cat([torch.cat([4 * m, 4 * m + 2], 1), torch.cat([4 * m + 3, 4 * m + 1], 1)], 0)
    return m


def copy_selection(lattice: tuple[int, ...], kept: torch.Tensor, forced: bool = False) -> Selection:
    """A static selection from a kept set: every pruned token copies its nearest kept token. Keeping every
    token is the identity selection; forced (regions.forced_regions()), the full kept set stays in the
    order the method drew it, so the copy map is a real permutation."""
    full = kept.shape[0] == math.prod(lattice)
    if full and not forced:
        return identity_selection(kept.shape[0])
    if not full:
        kept = torch.sort(kept).values
    return Selection(kept[None], nearest_kept(tuple(lattice), kept)[None, :, None], None)


@static_table
def uniform_selection(lattice: tuple[int, ...], k: int, forced: bool = False) -> Selection:
    n = math.prod(lattice)
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..{n} for lattice {lattice}")
    if k == n and not forced:
        return identity_selection(n)
    h, w = lattice[-2], lattice[-1]
    t = max(1, math.ceil(math.log2(max(h, w))))
    tile = _bayer(min(t, 3))  # 8x8 tile: even spread, finer than any ratio step we quantise to
    s = tile.shape[0]
    rank2d = tile[torch.arange(h)[:, None] % s, torch.arange(w)[None, :] % s]
    rank = rank2d.reshape(1, -1)
    if len(lattice) == 3:  # video: shift the pattern per frame so kept tokens alternate in time too
        f = lattice[0]
        rank = (rank + (torch.arange(f)[:, None] * (s * s // 2 + 1))) % (s * s)
    rank = rank.reshape(-1) * n + torch.arange(n)  # ties broken by position
    return copy_selection(lattice, torch.argsort(rank)[:k], forced)


@register_method
class Uniform(Method):
    name = "uniform"
    preferred = 5   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    default_schedule = "uniform-progressive"

    def select(self, x, lattice, k, pairs=None):
        return uniform_selection(tuple(lattice), int(k), regions_forced())
