"""`random`: a seeded random keep set; a pruned token copies its nearest kept token. The generator is
a dedicated one seeded from the `seed` parameter (never the global RNG): same seed, same selection."""
from __future__ import annotations

import math
import torch

from ..regions import identity_selection, regions_forced
from .base import Method, register_method
from .lattice import static_table
from .uniform import copy_selection


@static_table
def random_selection(lattice: tuple[int, ...], k: int, seed: int, forced: bool = False):
    n = math.prod(lattice)
    if k >= n and not forced:
        return identity_selection(n)
    g = torch.Generator().manual_seed(seed)
    return copy_selection(lattice, torch.randperm(n, generator=g)[:k], forced)


@register_method
class Random(Method):
    name = "random"
    preferred = 4   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    defaults = {"seed": 0}

    def select(self, x, lattice, k, pairs=None):
        return random_selection(tuple(lattice), int(k), self.params["seed"], regions_forced())
