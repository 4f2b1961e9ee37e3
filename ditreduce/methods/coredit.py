"""`coredit` (CoReDiT, arXiv 2605.14191): spatial-coherence pruning with neighbour reconstruction.

- Score: the spatial-coherence score of every image token, the mean cosine similarity to its in-frame
  lattice neighbours (8 inside, fewer at the border, no wrap-around), by shifted tensors: O(8·N·C).
- Structured pruning: in every 2×2 window the least coherent token is an anchor and always kept; of
  the others the most coherent are pruned. Every pruned token therefore keeps a retained neighbour
  (its window's anchor) inside its 3×3 reconstruction window; hence ratio <= 0.75. q and k/v are
  reduced alike.
- Reconstruction: a pruned token's output is the similarity-weighted mean of its retained neighbours'
  outputs, w_ij = softmax_j(cos_ij / tau) over its `slots` most similar kept neighbours j (rows sum to
  1), in the ABI's fixed-slot form: slot 0 is the token itself (weight 1 if kept, else 0), slots 1..slots
  the neighbours (`slots: 8` uses every kept neighbour; 3 keeps the reconstruct cheap: it is 1 + slots
  row gathers over all tokens).
- CFG (`cfg`): `per_sample` scores every sample of the batch on its own; `shared` averages the scores
  and similarities of the two halves of a CFG batch [uncond | cond] so both halves keep the same tokens.
"""
from __future__ import annotations

import math

import torch
from annotated_types import Interval

from ..regions import Selection, identity_selection, regions_forced, take_tokens
from .base import Method, register_method
from .lattice import (DIRECTIONS, frames, grouped_k, inverse_positions, neighbour_cosines, neighbour_table, on_device,
                      share_cfg_halves, topk_indices, window_argmin)

ANCHOR_PRIORITY = 1e4
OPPOSITE = torch.tensor([DIRECTIONS.index((-dy, -dx)) for dy, dx in DIRECTIONS])  # direction d's opposite direction


def coherence(sims: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, N] spatial-coherence score from [B, N, 8] neighbour cosines and the [N, 8] inside-frame mask."""
    v = valid.to(sims.dtype)
    return (sims * v).sum(-1) / v.sum(-1).clamp(min=1)


def coredit_select(x: torch.Tensor, lattice: tuple[int, ...], k: int, tau: float = 0.1,
                   cfg: str = "per_sample", slots: int = 3, pool: bool = True, pairs: torch.Tensor | None = None
                   ) -> Selection:
    """In-graph selection on the image tokens x [B, N, C] of one region. pairs: the CFG pairs of the batch
    (lattice.cfg_pairs), which `cfg: shared` shares between; None: every (i, i + B/2)."""
    b, n, _ = x.shape
    if k >= n and not regions_forced():
        return identity_selection(n, device=x.device)
    k = min(k, n)
    nbr, valid = on_device(neighbour_table(tuple(lattice)), x.device)
    sims = neighbour_cosines(x, lattice)                          # [B, N, 8]
    if cfg == "shared":
        sims = share_cfg_halves(sims, pairs)
    sc = coherence(sims, valid)                                   # [B, N]
    anchor = window_argmin(sc, lattice)                          # one per 2×2 window
    kept = topk_indices(anchor * ANCHOR_PRIORITY - sc, k)          # anchors, then the least coherent
    inv, keep = inverse_positions(kept, n)                        # [B, N] position in kept, 1.0 if kept
    nbr_keep = keep.index_select(1, nbr.reshape(-1)).reshape(b, n, -1)      # [B, N, 8]
    usable = (nbr_keep > 0) & valid & (keep[..., None] == 0)
    logits = torch.where(usable, sims / tau, torch.full_like(sims, -1e4))
    top, slot = torch.topk(logits, slots, dim=-1)                 # the `slots` most similar kept neighbours
    wn = torch.softmax(top, -1) * (top > -1e3).to(sims.dtype)
    w = torch.cat([keep[..., None], wn], -1)                      # [B, N, 1 + slots]
    src_n = inv.index_select(1, nbr.reshape(-1)).reshape(b, n, -1).gather(2, slot)
    src = torch.cat([inv[..., None], src_n], -1)
    if slots == 1:  # copy from the most similar kept neighbour: one slot, no weights
        src, w = torch.where(keep[..., None] > 0, inv[..., None], src_n), None
    if not pool:
        return Selection(kept, src, None if w is None else w.to(x.dtype))
    # pooled reduce: a kept token enters attention as the mean of itself and the pruned neighbours that
    # will be rebuilt from it, weighted by the reconstruct weights (their transpose)
    w8 = torch.zeros_like(sims).scatter(2, slot, wn)             # weight token i gives its neighbour in dir d
    incoming = w8.reshape(b, -1).index_select(1, (nbr * 8 + on_device(OPPOSITE, x.device)).reshape(-1)).reshape(b, n, 8)
    incoming = incoming * valid
    mw = torch.cat([torch.ones(b, k, 1, device=x.device), take_tokens(incoming, kept, 1)], -1)
    mw = mw / mw.sum(-1, keepdim=True)
    msrc = torch.cat([kept[..., None], nbr.index_select(0, kept.reshape(-1)).reshape(b, k, 8)], -1)
    return Selection(kept, src, None if w is None else w.to(x.dtype), msrc, mw.to(x.dtype))


@register_method
class CoReDiT(Method):
    name = "coredit"
    preferred = 1   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    static = False
    max_ratio = 0.75
    defaults = {"tau": 0.1, "cfg": "shared", "slots": 1, "pool": True}
    choices = {"cfg": ("per_sample", "shared"), "slots": tuple(range(1, 9))}
    # tau scales cosines in [-1, 1] into softmax logits: below 0.01 the softmax is already a hard max and
    # at 0 it is NaN; above 100 the weights are uniform
    ranges = {"tau": Interval(ge=0.01, le=100.0)}

    def kept_count(self, n, k, lattice):
        """At least one token per 2×2 window (the anchors), then a multiple of the TopK groups."""
        f, h, w = frames(tuple(lattice))
        windows = f * math.ceil(h / 2) * math.ceil(w / 2)
        return grouped_k(n, max(k, windows), minimum=windows)

    def select(self, x, lattice, k, pairs=None):
        return coredit_select(x, tuple(lattice), int(k), **self.params, pairs=pairs)
