"""The functions a rewritten graph calls (FX call_function targets): pure tensor functions of the
region's tensors and static Python arguments, traced into plain ATen by a re-export."""
from __future__ import annotations

import torch

from ..regions import Selection, embed_in_sequence, forced_regions
from .base import get_method


def image_tokens(t: torch.Tensor, dim: int, start: int, n: int) -> torch.Tensor:
    """The image segment of a token tensor as [B, n, C] (token dim `dim`, everything else flattened
    into channels: heads of a [B, H, L, D] tensor become channels)."""
    dim = dim % t.dim()
    seg = t.narrow(dim, start, n)
    perm = [0, dim] + [d for d in range(1, t.dim()) if d != dim]
    return seg.permute(perm).reshape(t.shape[0], n, -1)


def select_tokens(x: torch.Tensor, pairs: torch.Tensor | None = None, *, method: str, params: tuple, lattice: tuple,
                  k: int, forced: bool = False) -> Selection:
    """Run a method's in-graph selection on the image tokens x [B, N, C]; pairs: the batch's CFG pairs
    (lattice.cfg_pairs), for methods whose `cfg: shared` shares a selection between them. forced: the
    graph was built inside regions.forced_regions(), so k = N runs the method's real selection too."""
    m = get_method(method)(**dict(params))
    with forced_regions(forced):
        sel = m.select(x, lattice, k) if pairs is None else m.select(x, lattice, k, pairs=pairs)
    return sel


def embed(sel: Selection, *, start: int, seq_len: int, merges_first: bool = True) -> Selection:
    return embed_in_sequence(sel, start, seq_len, merges_first)
