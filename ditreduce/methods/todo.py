"""`todo` (ToDo, arXiv 2402.13573): keys and values downsampled on the lattice, queries full, nothing
to reconstruct. Ratio r keeps a kv grid of (1 - r) of the tokens, sqrt(1 - r) per axis (frames kept):
r = 0.75 is ToDo's 2×2 downsampling. `mode: avg` averages each cell (area pooling), `nearest` takes
the token nearest to the cell centre (ToDo's default `nearest-exact`). Cells of non-divisible lattices
are the adaptive-pooling bins; the weights are static constants of the graph (merge slots)."""
from __future__ import annotations

import math
import torch

from ..regions import Selection, identity_selection, regions_forced
from .base import Method, register_method
from .lattice import frames, static_table


def kv_grid(lattice: tuple[int, ...], k: int) -> tuple[int, int]:
    f, h, w = frames(lattice)
    s = math.sqrt(k / (f * h * w))
    return max(1, min(h, round(h * s))), max(1, min(w, round(w * s)))


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]


@static_table
def todo_selection(lattice: tuple[int, ...], k: int, mode: str, forced: bool = False) -> Selection:
    """The pooling cells of a kv grid as merge slots. A full grid is the identity selection, or inside
    regions.forced_regions() (forced) the pooling of one-token cells."""
    f, h, w = frames(lattice)
    n = f * h * w
    hk, wk = kv_grid(lattice, k)
    if hk * wk * f == n and not forced:
        return identity_selection(n)
    rows, cols = _bins(h, hk), _bins(w, wk)
    r = 1 if mode == "nearest" else max(b - a for a, b in rows) * max(b - a for a, b in cols)
    msrc, mw, kept = [], [], []
    for fi in range(f):
        for y0, y1 in rows:
            for x0, x1 in cols:
                cell = [(fi * h + y) * w + x for y in range(y0, y1) for x in range(x0, x1)]
                centre = (fi * h + (y0 + y1 - 1) // 2) * w + (x0 + x1 - 1) // 2
                kept.append(centre)
                if mode == "nearest":
                    cell = [centre]
                pad = r - len(cell)
                msrc.append(cell + [cell[0]] * pad)
                mw.append([1.0 / len(cell)] * len(cell) + [0.0] * pad)
    kept_t = torch.tensor(kept)[None]
    src = torch.zeros(1, n, 1, dtype=torch.long)  # unused: q is not reduced, nothing is reconstructed
    return Selection(kept_t, src, None, torch.tensor(msrc)[None], torch.tensor(mw)[None])


@register_method
class ToDo(Method):
    name = "todo"
    preferred = 3   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    reduces_q = False
    defaults = {"mode": "avg"}
    choices = {"mode": ("avg", "nearest")}

    def kept_count(self, n, k, lattice):
        f = frames(lattice)[0]
        hk, wk = kv_grid(tuple(lattice), k)
        return f * hk * wk

    def select(self, x, lattice, k, pairs=None):
        return todo_selection(tuple(lattice), int(k), self.params["mode"], regions_forced())
