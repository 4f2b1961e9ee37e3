"""`uniform`: a structured keep-pattern spread evenly over the lattice; a pruned token copies its
nearest kept neighbour. Data-independent, so the selection is a constant of the variant graph."""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..regions import Selection, identity_selection
from .base import Method, register_method


def _bayer(n: int) -> torch.Tensor:
    """Ordered-dither (Bayer) ranks on a 2^n x 2^n tile: any prefix of the ranking is spread evenly."""
    m = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(n):
        m = torch.cat([torch.cat([4 * m, 4 * m + 2], 1), torch.cat([4 * m + 3, 4 * m + 1], 1)], 0)
    return m


def _coords(lattice: tuple[int, ...]) -> torch.Tensor:
    axes = [torch.arange(s, dtype=torch.float32) for s in lattice]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lattice))


@lru_cache(maxsize=64)
def uniform_selection(lattice: tuple[int, ...], k: int) -> Selection:
    n = math.prod(lattice)
    if not 0 < k <= n:
        raise ValueError(f"k={k} must be in 1..{n} for lattice {lattice}")
    if k == n:
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
    kept = torch.sort(torch.argsort(rank)[:k]).values
    coords = _coords(lattice)
    kc = coords[kept]
    src = torch.empty(n, dtype=torch.long)
    for lo in range(0, n, 2048):  # nearest kept token, chunked: static pattern, computed once
        d = torch.cdist(coords[lo:lo + 2048], kc)
        src[lo:lo + 2048] = d.argmin(1)
    src[kept] = torch.arange(k)
    return Selection(kept[None], src[None, :, None], torch.ones(1, n, 1))


@register_method
class Uniform(Method):
    name = "uniform"
    reduces_q = True
    static = True

    def select(self, x, lattice, k, state=None):
        return uniform_selection(tuple(lattice), int(k)), state
