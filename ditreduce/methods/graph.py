"""The functions a rewritten graph calls (FX call_function targets): pure tensor functions of the
region's tensors and static Python arguments, traced into plain ATen by a re-export."""
from __future__ import annotations

import torch

from ..regions import Selection, embed_in_sequence, forced_regions
from .base import SiteContext, get_method


def image_tokens(t: torch.Tensor, dim: int, start: int, n: int) -> torch.Tensor:
    """The image segment of a token tensor as [B, n, C] (token dim `dim`, everything else flattened
    into channels: heads of a [B, H, L, D] tensor become channels)."""
    dim = dim % t.dim()
    seg = t.narrow(dim, start, n)
    perm = [0, dim] + [d for d in range(1, t.dim()) if d != dim]
    return seg.permute(perm).reshape(t.shape[0], n, -1)


def select_tokens(x: torch.Tensor | None, state: dict, pairs: torch.Tensor | None, *, method: str, params: tuple,
                  **ctx) -> tuple[Selection, dict]:
    """A method's selection inside the graph (Method.selection): x the image tokens [B, N, C] (None where the
    method reads none), state its state inputs, pairs the batch's CFG pairs (lattice.cfg_pairs) for `cfg:
    shared`; ctx the SiteContext's fields. With ctx forced (the graph was built inside
    regions.forced_regions()), k = N runs the method's real selection too."""
    m = get_method(method)(**dict(params))
    context = SiteContext(**ctx)
    with forced_regions(context.forced):
        return m.selection(x, state, context, pairs)


def observe_tokens(y: torch.Tensor, state: dict, sel: Selection, *, method: str, params: tuple, **ctx) -> dict:
    """A method's state from the site's output tokens y [B, N, C] (Method.observe)."""
    return get_method(method)(**dict(params)).observe(y, state, sel, SiteContext(**ctx))


def embed(sel: Selection, *, start: int, seq_len: int, merges_first: bool = True) -> Selection:
    return embed_in_sequence(sel, start, seq_len, merges_first)
