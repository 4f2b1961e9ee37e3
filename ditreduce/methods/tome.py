"""`tome` (ToMe for Stable Diffusion, dbolya/tomesd semantics) under the region ABI.

- Destinations: one per 2×2 window, its position drawn by a dedicated generator seeded by `seed`
  (shared by the batch, as tomesd does); every other token is a source.
- Matching: each source's similarity (cosine) to candidate destinations; the r = N − k sources with
  the highest best-similarity merge into their best destination (by mean, dst and its sources weighted
  equally, as tomesd's scatter_reduce("mean")); unmerge copies the destination's output.
- Local matching: a source's candidates are the destinations of its own and the 8 surrounding windows
  (a 6×6-token neighbourhood), not all destinations. This is what gives the merge a fixed slot count
  (a destination can only absorb the 27 sources of its 3×3 windows), so the merge is gathers and
  multiplies — no scatter_reduce — and lowers to TensorRT.
- Above MAX_TOPK (3840) sources the top-r choice runs per contiguous band of sources (TopK's limit).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from .. import regions
from ..regions import WINDOW_OFFSETS, Selection, identity_selection, regions_forced, take_tokens
from .base import Method, register_method
from .lattice import frames, inverse_positions, on_device, share_cfg_halves, static_table, topk_groups

OFFSETS = WINDOW_OFFSETS  # a source's 9 candidate windows, in the order of its `arg` (and of regions' wmix)


@static_table
def tome_tables(lattice: tuple[int, ...], seed: int) -> dict:
    """Static tables of the bipartite split: dst / src token lists and the local candidate structure."""
    f, h, w = frames(lattice)
    hw, ww = math.ceil(h / 2), math.ceil(w / 2)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, 4, (f, hw, ww), generator=g)
    dy, dx = pick // 2, pick % 2
    wy, wx = torch.arange(hw)[:, None] * 2, torch.arange(ww)[None] * 2
    # a pick outside a partial border window falls back to the window's top-left token
    dy = torch.where(wy + dy < h, dy, 0)
    dx = torch.where(wx + dx < w, dx, 0)
    dst_tok = ((torch.arange(f)[:, None, None] * h + wy + dy) * w + wx + dx).reshape(-1)
    n, d = f * h * w, dst_tok.numel()
    is_dst = torch.zeros(n, dtype=torch.bool)
    is_dst[dst_tok] = True
    src_tok = torch.arange(n)[~is_dst]
    fi, yi, xi = src_tok // (h * w), (src_tok // w) % h, src_tok % w
    win_y, win_x = yi // 2, xi // 2
    cand, cvalid = [], []
    for oy, ox in OFFSETS:
        cy, cx = win_y + oy, win_x + ox
        ok = (cy >= 0) & (cy < hw) & (cx >= 0) & (cx < ww)
        cand.append((fi * hw + cy.clamp(0, hw - 1)) * ww + cx.clamp(0, ww - 1))
        cvalid.append(ok)
    cand, cvalid = torch.stack(cand, -1), torch.stack(cvalid, -1)  # [S, 9] dst-list index, inside the frame
    # reverse: for each dst, the sources that may merge into it, and through which offset
    s = src_tok.numel()
    slots = [[] for _ in range(d)]
    for si in range(s):
        for o in range(len(OFFSETS)):
            if cvalid[si, o]:
                slots[int(cand[si, o])].append((si, o))
    r = max(len(x) for x in slots)
    dsrc = torch.zeros(d, r, dtype=torch.long)
    doff = torch.full((d, r), -1, dtype=torch.long)
    for j, lst in enumerate(slots):
        for t, (si, o) in enumerate(lst):
            dsrc[j, t], doff[j, t] = si, o
    msrc = torch.cat([dst_tok[:, None], src_tok.index_select(0, dsrc.reshape(-1)).reshape(d, -1)], -1)[None]
    return {"dst_tok": dst_tok, "src_tok": src_tok, "cand": cand, "cvalid": cvalid, "dsrc": dsrc, "doff": doff,
            "msrc": msrc, "token_order": torch.argsort(torch.cat([dst_tok, src_tok])),
            **_window_tables(src_tok, dst_tok, cand, (f, h, w))}


def tables_on(lattice, seed: int, device) -> dict:
    """tome_tables with its tensors on `device` (the graph functions' input device), copied there once."""
    return on_device(tome_tables(tuple(lattice), seed), device)


def _window_tables(src_tok, dst_tok, cand, fhw) -> dict:
    """Per 2×2 window: its (up to 3) source tokens and the 9 candidate destination tokens, so that the
    similarities are one batched product per window ([3, C] × [C, 9]), and each source's slot in it."""
    f, h, w = fhw
    hw, ww = math.ceil(h / 2), math.ceil(w / 2)
    nw = f * hw * ww
    win = (src_tok // (h * w) * hw + (src_tok // w) % h // 2) * ww + src_tok % w // 2
    win_srcs = dst_tok[:, None].repeat(1, 3).clone()  # padding slots read the window's dst (ignored)
    win_cand = torch.zeros(nw, 9, dtype=torch.long)
    src_pos = torch.zeros(src_tok.numel(), dtype=torch.long)
    fill = [0] * nw
    for si, wi in enumerate(win.tolist()):
        win_srcs[wi, fill[wi]] = src_tok[si]
        win_cand[wi] = dst_tok[cand[si]]
        src_pos[si] = wi * 3 + fill[wi]
        fill[wi] += 1
    # the merge's window form (regions.Selection.wtok / wmix): windows on a grid padded by one empty window
    # on every side; slot 0 the destination, 1..3 the sources; empty slots read token 0 with weight 0
    hp, wp = hw + 2, ww + 2
    inner = torch.zeros(f, hp, wp, dtype=torch.bool)
    inner[:, 1:-1, 1:-1] = True
    inner = inner.reshape(-1)
    wtok = torch.zeros(f * hp * wp, 4, dtype=torch.long)
    wtok[inner] = torch.cat([dst_tok[:, None], win_srcs], 1)
    s = src_tok.numel()
    slot_src = torch.full((nw * 3,), s, dtype=torch.long)   # source-list index of each source slot, s: none
    slot_src[src_pos] = torch.arange(s)
    wsrc = torch.full((f * hp * wp, 3), s, dtype=torch.long)
    wsrc[inner] = slot_src.reshape(nw, 3)
    wdst = torch.full((f * hp * wp,), nw, dtype=torch.long)  # dst-list index of each window, nw: none
    wdst[inner] = torch.arange(nw)
    # each source's slot in the padded grid's [windows, 3 sources] (window-major), for _grid_similarity
    pad_src_pos = inner.nonzero()[:, 0].index_select(0, src_pos // 3) * 3 + src_pos % 3
    return {"win_srcs": win_srcs.reshape(-1), "win_cand": win_cand.reshape(-1), "src_pos": src_pos, "nw": nw,
            "wtok": wtok.reshape(1, f, hp, wp, 4), "wsrc": wsrc.reshape(-1), "wdst": wdst, "pad_src_pos": pad_src_pos}


def merge_groups(s: int) -> int:
    """Groups the ordering of s sources is split into so that each TopK sorts <= MAX_TOPK of them."""
    return topk_groups(s, s)


def tome_kept(n: int, k: int, lattice: tuple[int, ...]) -> int:
    f, h, w = frames(lattice)
    d = f * math.ceil(h / 2) * math.ceil(w / 2)
    s = n - d
    r = min(n - k, s)
    g = merge_groups(s)
    return n - (g * round(r / g) if g > 1 else r)


def _local_similarity(x: torch.Tensor, t: dict) -> torch.Tensor:
    """[B, S, 9] cosine of every source to the destinations of the 3×3 windows around its own, on the raw
    tokens, divided by the norms (F.normalize's eps) on the [B, S, 9] result (no normalised [B, N, C] copy).
    One batched [3, C] × [C, 9] product per window over a [windows, 9, C] gather of the candidates, or, where
    that gather would exceed regions.WIDE_OUTPUT_BYTES (regions.is_large), _grid_similarity (no such gather)."""
    x = x.float()
    b, c, nw = x.shape[0], x.shape[-1], t["nw"]
    if regions.is_large(b * nw * 9 * c * x.element_size(), regions.WIDE_OUTPUT_BYTES):
        return _grid_similarity(x, t)
    norm = torch.linalg.vector_norm(x, dim=-1).clamp_min(1e-12)               # [B, N]
    us = take_tokens(x, t["win_srcs"][None], 1).reshape(b * nw, 3, c)
    ud = take_tokens(x, t["win_cand"][None], 1).reshape(b * nw, 9, c)
    sims = torch.bmm(us, ud.transpose(1, 2)).reshape(b, nw, 3, 9)
    scale = norm.index_select(1, t["win_srcs"]).reshape(b, nw, 3, 1) * norm.index_select(1, t["win_cand"]).reshape(b, nw, 1, 9)
    return (sims / scale).reshape(b, nw * 3, 9).index_select(1, t["src_pos"])


def _grid_similarity(x: torch.Tensor, t: dict) -> torch.Tensor:
    """_local_similarity from one row gather of the windows' tokens on the padded window grid (wtok:
    destination, then up to 3 sources, a ring of empty windows around each frame). Flattened over batch and
    windows, the 3 neighbours of window p in a row of the grid are windows p + dy·Wp + (-1, 0, 1): an
    overlapping strided view of the destinations (`unfold`, no copy; a constant Gather in ONNX), so each of
    the 3 rows of offsets is one batched [3, C] × [C, 3] product per window. Only inner windows are
    computed; their neighbours stay inside the same frame's padded grid (no product crosses a frame or a
    sample)."""
    b, c = x.shape[0], x.shape[-1]
    _, f, hp, wp, slots = t["wtok"].shape
    p = f * hp * wp
    g = take_tokens(x, t["wtok"].reshape(1, -1), 1).reshape(b * p, slots, c)  # [B·P, dst | 3 sources, C]
    norm = torch.linalg.vector_norm(g, dim=-1).clamp_min(1e-12)              # [B·P, 4]
    m = wp + 1                                     # first window whose 9 neighbours are inside the array
    length = b * p - 2 * m
    dots, dnorms = [], []
    for dy in (-1, 0, 1):                          # WINDOW_OFFSETS order: dy outer, dx inner
        lo = m + dy * wp - 1
        dots.append(torch.bmm(g[m:m + length, 1:], g[lo:lo + length + 2, 0].unfold(0, 3, 1)))
        dnorms.append(norm[lo:lo + length + 2, 0].unfold(0, 3, 1))
    sims = torch.cat(dots, -1) / (norm[m:m + length, 1:, None] * torch.cat(dnorms, -1)[:, None, :])
    sims = F.pad(sims, (0, 0, 0, 0, m, m)).reshape(b, p * (slots - 1), 9)  # ring windows: zeros, never read
    return sims.index_select(1, t["pad_src_pos"])


def tome_select(x: torch.Tensor, lattice: tuple[int, ...], k: int, seed: int = 0, cfg: str = "per_sample",
                pairs: torch.Tensor | None = None) -> Selection:
    n = x.shape[1]
    if k >= n and not regions_forced():
        return identity_selection(n, device=x.device)
    t = tables_on(lattice, seed, x.device)
    sims = _local_similarity(x, t)                                            # [B, S, 9]
    if cfg == "shared":
        sims = share_cfg_halves(sims, pairs)
    sims = torch.where(t["cvalid"], sims, torch.full_like(sims, -2.0))
    best, arg = sims.max(-1)                                                  # [B, S]
    merged, unmerged = _split_sources(best, max(n - k, 0))
    return merge_selection(t, merged, unmerged, arg, n, x.dtype)


def merge_selection(t: dict, merged: torch.Tensor, unmerged: torch.Tensor, arg: torch.Tensor, n: int,
                    dtype=torch.float32) -> Selection:
    """The region Selection of a bipartite matching: kept = [destinations | unmerged sources]; each
    destination's merge slots average it with the merged sources whose best candidate it is; a merged
    source copies its destination's output (ToMe's unmerge). Shared by `tome` and `dito`."""
    b, s = arg.shape
    src_tok, dst_tok = t["src_tok"], t["dst_tok"]
    d = dst_tok.numel()
    dev = arg.device
    kept = torch.cat([dst_tok.expand(b, d), src_tok.index_select(0, unmerged.reshape(-1)).reshape(b, -1)], 1)
    mm = torch.zeros(b, s, device=arg.device).scatter(1, merged, torch.ones(merged.shape, device=arg.device))
    dsrc, doff = t["dsrc"], t["doff"]
    a = mm.index_select(1, dsrc.reshape(-1)).reshape(b, d, -1)
    a = a * (arg.index_select(1, dsrc.reshape(-1)).reshape(b, d, -1) == doff).to(a.dtype)
    size = 1.0 + a.sum(-1)                                                     # [B, d]: merge size
    inv = 1.0 / size
    mw = torch.cat([torch.ones(b, d, 1, device=arg.device), a], -1)
    mw = mw / mw.sum(-1, keepdim=True)
    msrc = t["msrc"]
    target_dst = t["cand"].expand(b, s, 9).gather(2, arg[..., None])[..., 0]  # dst-list index
    # window form: each window's weight of its destination (offset 0) and of each source to its target
    zero = torch.zeros(b, 1, device=dev)
    ws = torch.cat([mm * inv.gather(1, target_dst), zero], 1).index_select(1, t["wsrc"]).reshape(b, -1, 3)
    wa = torch.cat([arg, torch.zeros(b, 1, dtype=arg.dtype, device=dev)], 1).index_select(1, t["wsrc"])
    offs = torch.arange(len(OFFSETS), device=dev)
    wsrc_mix = (wa.reshape(b, -1, 3, 1) == offs).to(ws.dtype) * ws[..., None]          # [B, P, 3, 9]
    wdst_mix = torch.cat([inv, zero], 1).index_select(1, t["wdst"])[..., None] * (offs == OFFSETS.index((0, 0)))
    wmix = torch.cat([wdst_mix[..., None], wsrc_mix.transpose(2, 3)], -1)                # [B, P, 9, 4]
    wtok = t["wtok"]
    src_target = torch.where(mm > 0, dst_tok.index_select(0, target_dst.reshape(-1)).reshape(b, s), src_tok.expand(b, s))
    target = torch.cat([dst_tok.expand(b, d), src_target], 1)                 # in [dst | src] token order
    target = target.index_select(1, t["token_order"])                        # [dst | src] -> token order
    pos, _ = inverse_positions(kept, n)
    sizes = torch.cat([size, torch.ones(b, kept.shape[1] - d, device=dev)], 1)  # [dst | unmerged sources]
    return Selection(kept, pos.gather(1, target)[..., None], None, msrc, mw.to(dtype), wtok,
                     wmix.reshape(b, *wtok.shape[1:4], len(OFFSETS), 4).to(dtype), sizes)


def _split_sources(best: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(merged [B, r], unmerged [B, S - r]) source-list indices: the r most similar merge. Above the
    TopK limit the sources are ordered per contiguous band, r / G merging in each."""
    b, s = best.shape
    g = merge_groups(s)
    per = s // g
    order = torch.topk(best.reshape(b, g, per), per, dim=2).indices
    order = order + torch.arange(g, device=best.device)[:, None] * per
    rg = r // g
    return order[:, :, :rg].reshape(b, -1), order[:, :, rg:].reshape(b, -1)


@register_method
class ToMe(Method):
    name = "tome"
    preferred = 2   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    static = False
    max_ratio = 0.75
    defaults = {"seed": 0, "cfg": "shared"}
    choices = {"cfg": ("per_sample", "shared")}

    def kept_count(self, n, k, lattice):
        return tome_kept(n, k, tuple(lattice))

    def select(self, x, lattice, k, pairs=None):
        return tome_select(x, tuple(lattice), int(k), **self.params, pairs=pairs)
