"""Region math: pure tensor functions, no FX inside, written to lower to ONNX / TensorRT.

The region ABI (see docs/how-it-works.md, "Region ABI"):

    Selection.kept  LongTensor[Bs, k]      which tokens of a sequence enter attention (one per reduced slot)
    Selection.src   LongTensor[Bs, N, M]   for each of the N tokens, M slots into the kept outputs
    Selection.w     Tensor[Bs, N, M]       slot weights; rows sum to 1 (None: M == 1, weight 1)
    Selection.msrc  LongTensor[Bs, k, R]   optional merge slots: reduced token j = sum_r mw[j, r] * x[msrc[j, r]]
    Selection.mw    Tensor[Bs, k, R]       (ToMe merges, ToDo pooling); without them reduce is gather(x, kept)
    Selection.wtok  LongTensor[1, F, Hp, Wp, T]     optional local-window form of the same merge (ToMe / DiTo):
    Selection.wmix  Tensor[Bs, F, Hp, Wp, 9, T]     the T tokens of each window (a padded grid of windows,
                    one ring of empty windows around), and the weight of each to the destination of the window
                    at each of the 9 offsets around it; reduce then uses it instead of msrc / mw (equal result)
    Selection.sizes Tensor[Bs, k] float32  optional: how many tokens each kept token stands for, where the
                    method knows it (ToMe / DiTo: 1 + the sources merged into a destination); proportional
                    attention then reads it instead of counting it (token_sizes: an O(N·k) one-hot)

    reduce(x, sel)           = gather(x, kept)          or  sum_r mw * gather(x, msrc[..., r])   # [..., k, C]
                               (window form: one [9, T] x [T, C] product per window, then 9 shifted adds)
    reconstruct(y_kept, sel) = sum_m w[..., m] * gather(y_kept, src[..., m])                    # [..., N, C]

Bs is 1 (one pattern for the whole batch) or B. Every gather is a row gather (`index_select` on the
token dim, batch folded into the index for per-sample selections): one ONNX Gather, contiguous rows,
no per-element index reads, no scatter, no boolean mask, no data-dependent shape.

Contract: k == N means the identity selection. Methods return it at ratio zero, and the region then
runs the plain dense ops (no gather at all), so ratio zero costs nothing and is exact.
Inside `forced_regions()` (for tests) every method computes its real selection with k = N instead (all
tokens kept in the order its TopK / matching / drawing gives, merge slots with zero weight on other
tokens) and the region runs the full gather / sdpa / reconstruct path.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F


class Selection(NamedTuple):
    kept: torch.Tensor                   # [Bs, k] int64
    src: torch.Tensor                    # [Bs, N, M] int64
    w: Optional[torch.Tensor] = None     # [Bs, N, M] float, None: one slot of weight 1
    msrc: Optional[torch.Tensor] = None  # [Bs, k, R] int64
    mw: Optional[torch.Tensor] = None    # [Bs, k, R] float
    wtok: Optional[torch.Tensor] = None  # [1, F, Hp, Wp, T] int64: window form of the merge (see module doc)
    wmix: Optional[torch.Tensor] = None  # [Bs, F, Hp, Wp, 9, T] float
    sizes: Optional[torch.Tensor] = None  # [Bs, k] float32: token sizes the method knows (see token_sizes)


def identity_selection(n: int, device=None) -> Selection:
    """Ratio zero: every token kept, each maps to itself with weight 1."""
    ar = torch.arange(n, device=device)
    return Selection(ar[None], ar[None, :, None], None)


class _BuildForms(threading.local):
    """How the region ops of the variants a thread builds (and runs) are written: the build switches below,
    each set for the current thread only, so a compile in one thread never changes what another traces."""

    forced = False        # forced_regions()
    pointwise = False     # pointwise_products()
    large: bool | None = None   # size_forms(): None, chosen by ROW_GATHER_BYTES / WIDE_OUTPUT_BYTES


_FORMS = _BuildForms()


@contextlib.contextmanager
def _switched(name: str, value):
    prev = getattr(_FORMS, name)
    setattr(_FORMS, name, value)
    try:
        yield
    finally:
        setattr(_FORMS, name, prev)


def forced_regions(on: bool = True):
    """While active (in this thread), methods asked for k == N tokens compute their real selection and k == N
    regions take the full reduce / sdpa / reconstruct path (rewrite and the methods read it when a variant graph
    is built, attention_region when it runs), so ratio zero tests the selection's and the region's math."""
    return _switched("forced", on)


def regions_forced() -> bool:
    return _FORMS.forced


@contextlib.contextmanager
def outside_inference_mode():
    """Where the constants a reduced model keeps are built (captures, rewrites, backend builds, cached
    tables): outside torch.inference_mode() even when the call that builds them is inside one, so they are
    ordinary tensors (an inference tensor kept there fails every later call that records autograd), with
    grad mode off (inference_mode(False) alone turns it on). Outside inference mode nothing changes."""
    if not torch.is_inference_mode_enabled():
        yield
        return
    with torch.inference_mode(False), torch.no_grad():
        yield


def pointwise_products(on: bool = True):
    """While active, the local-window merge (ToMe / DiTo) is traced as broadcast products and sums instead of
    batched products per window. Inductor fuses those with the windows' gather into one
    loop, where the batched product stays a separate, poorly vectorised tiny-GEMM call (backends.inductor /
    aotinductor trace their variants inside this). Eager, ONNX and TensorRT keep the batched products:
    unfused, a bmm is faster than the products and sums it replaces, and it is one MatMul node in ONNX.
    The slot sums (reconstruct, CoReDiT's pooled merge) stay batched products everywhere: as fused sums
    the reduced CoReDiT call of the PixArt-α shape at 4096 tokens ran 6 % slower on inductor
    (tools/inductor_merge_ab.py). Equal results (to float rounding). In this thread only."""
    return _switched("pointwise", on)


def is_identity(sel: Selection, n: int) -> bool:
    """Static test (shapes only): the contract k == N means identity (never inside forced_regions())."""
    return sel.kept.shape[-1] == n and not _FORMS.forced


# Sizes (bytes) from which region ops take the forms that are faster for large tensors on CPU (eager,
# 2-core AMD EPYC, docs/methods.md "ToMe"); below them per-op overhead dominates and the plain forms win.
# Tests set them to 0 and to a huge value to check both forms against the same references.
ROW_GATHER_BYTES = 4 << 20    # take_tokens: a gather this large folds the leading dims into a dim-0 row gather
# A batched product whose output would exceed this is split: the window merge into one product per offset,
# ToMe's similarities into one per row of offsets without the candidates' gather. A fresh [windows, 9, C]
# tensor 2.25 times the input costs more than the product once it is large (glibc maps allocations above
# 32 MiB afresh, page faults and all, on every call); nine small products cost more than one below it.
WIDE_OUTPUT_BYTES = 16 << 20


def size_forms(large: bool):
    """While active (in this thread), every region op takes its large-tensor form (large=True) or its
    small-tensor form (False) whatever the sizes (ROW_GATHER_BYTES, WIDE_OUTPUT_BYTES): tests check both
    against one reference."""
    return _switched("large", large)


def is_large(nbytes: int, bound: int) -> bool:
    """Whether an op of nbytes takes its large-tensor form: past `bound`, unless size_forms() says."""
    return nbytes > bound if _FORMS.large is None else _FORMS.large


def take_tokens(x: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """x[..., idx, ...] along `dim`; idx is [Bs, k] with Bs 1 (shared) or x.shape[0] (per sample).

    One row gather on dim 0 of x seen as [rows · N, C] (the leading dims folded into the index): on CPU
    `index_select` along an inner dim is up to twice as slow as the dim-0 row copy at the region's sizes. A
    shared index keeps the inner-dim gather for a gather under ROW_GATHER_BYTES (the index arithmetic costs
    more there) and on a non-contiguous x (an expanded mask: read in place instead of materialised)."""
    dim = dim % x.dim()
    shape = x.shape
    n, k = shape[dim], idx.shape[1]
    lead = shape[:dim]
    rows = math.prod(lead)
    small = not is_large(x.numel() // max(n, 1) * k * x.element_size() + 1, ROW_GATHER_BYTES)
    if dim == 0 or (idx.shape[0] == 1 and (small or not x.is_contiguous())):
        return x.index_select(dim, idx[0])
    if rows == 1:
        flat_idx = idx[0]
    else:
        per_lead = idx.reshape((idx.shape[0],) + (1,) * (dim - 1) + (k,)).expand(*lead, k).reshape(rows, k)
        flat_idx = (per_lead + torch.arange(rows, device=x.device)[:, None] * n).reshape(-1)
    flat = x.reshape(rows * n, -1).index_select(0, flat_idx)
    return flat.reshape(*lead, k, *shape[dim + 1:])


def _slot_sum(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor | None, dim: int) -> torch.Tensor:
    """sum_m w[..., m] * gather(x, idx[..., m]) along dim, M small and static: one row gather of all
    L·M slots, then one batched [1, M] × [M, C] product per row (the gathered slots are read once, in
    place: no transposed copy)."""
    bs, length, m = idx.shape
    g = take_tokens(x, idx.reshape(bs, length * m), dim)
    g = g.reshape(*g.shape[:dim], length, m, *g.shape[dim + 1:])
    if w is None:
        return g.squeeze(dim + 1)
    lead, rest = g.shape[:dim], g.shape[dim + 2:]
    rows, width = math.prod(lead) * length, math.prod(rest)
    wb = w.to(x.dtype).expand(x.shape[0], length, m)
    wb = wb.reshape(x.shape[0], *([1] * (dim - 1)), length, m).expand(*lead, length, m).reshape(rows, 1, m)
    return torch.bmm(wb, g.reshape(rows, m, width)).reshape(*lead, length, *rest)


WINDOW_OFFSETS = tuple((oy, ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1))  # wmix's offset axis, in this order


def _window_merge(x: torch.Tensor, wtok: torch.Tensor, wmix: torch.Tensor, dim: int) -> torch.Tensor:
    """The merged destinations [..., F·H·W windows, ...] of a local-window merge: one row gather of the
    windows' tokens (each token read once), one batched [9, T] × [T, C] product per window giving what the
    window sends to each of the 9 windows around it, and 9 shifted adds (strided slices of the padded
    window grid): no gather of 28 slots, no scatter. Where that product's [windows, 9, C] output would
    exceed WIDE_OUTPUT_BYTES, one [1, T] × [T, C] product per offset instead (each destination-sized).
    Inside pointwise_products() the product is written as products and sums over the 9 offsets' slices
    (one fused loop under inductor)."""
    bs, f, hp, wp, no, t = wmix.shape
    hw, ww = hp - 2, wp - 2
    g = take_tokens(x, wtok.reshape(1, -1), dim)
    lead, rest = g.shape[:dim], g.shape[dim + 1:]
    rows, width = math.prod(lead), math.prod(rest)
    wb = wmix.to(x.dtype).reshape(bs, *([1] * (dim - 1)), f * hp * wp, no, t)
    wb = wb.expand(*lead, f * hp * wp, no, t).reshape(rows, f, hp, wp, no, t)
    g = g.reshape(rows, f, hp, wp, t, width)
    per_window = g.reshape(-1, t, width)                         # [windows, T, C]: the products' right side
    per_offset = is_large(rows * f * hp * wp * no * width * x.element_size(), WIDE_OUTPUT_BYTES)
    sent = None if _FORMS.pointwise or per_offset else \
        torch.bmm(wb.reshape(-1, no, t), per_window).reshape(rows, f, hp, wp, no, width)
    out = None
    for o, (oy, ox) in enumerate(WINDOW_OFFSETS):  # destination j receives what window j - offset sent it
        at = (slice(None), slice(None), slice(1 - oy, 1 - oy + hw), slice(1 - ox, 1 - ox + ww))
        if _FORMS.pointwise:
            part = (wb[at + (o, slice(None), None)] * g[at]).sum(-2)
        elif per_offset:
            part = torch.bmm(wb[..., o:o + 1, :].reshape(-1, 1, t), per_window)
            part = part.reshape(rows, f, hp, wp, width)[at]
        else:
            part = sent[at + (o,)]
        out = part.clone() if out is None else out.add_(part)
    return out.reshape(*lead, f * hw * ww, *rest)


def reduce_tokens(x: torch.Tensor, sel: Selection, dim: int = -2, merge_at: int = 0) -> torch.Tensor:
    """The k reduced tokens: the Km (= msrc.shape[1]) at kept positions [merge_at, merge_at + Km) are
    merges, the others gathers of kept (merge_at: see embed_in_sequence's merges_first)."""
    dim = dim % x.dim()
    if sel.msrc is None:
        return take_tokens(x, sel.kept, dim)
    if sel.wmix is not None:
        merged = _window_merge(x, sel.wtok, sel.wmix, dim)
    else:
        merged = _slot_sum(x, sel.msrc, sel.mw, dim)
    km, k = sel.msrc.shape[1], sel.kept.shape[1]
    if km == k:
        return merged
    parts = [merged]
    if merge_at > 0:
        parts.insert(0, take_tokens(x, sel.kept[:, :merge_at], dim))
    if merge_at + km < k:
        parts.append(take_tokens(x, sel.kept[:, merge_at + km:], dim))
    return torch.cat(parts, dim)


def reconstruct_tokens(y: torch.Tensor, sel: Selection, dim: int = -2) -> torch.Tensor:
    """Full-length output from kept outputs: out[i] = sum_m w[i, m] * y[src[i, m]]."""
    return _slot_sum(y, sel.src, sel.w, dim % y.dim())


def embed_in_sequence(sel: Selection, start: int, seq_len: int, merges_first: bool = True) -> Selection:
    """Lift a selection over an image segment [start, start+n) to the whole sequence of seq_len tokens.

    Tokens outside the segment are always kept and map to themselves. Kept order with merges_first: the
    image's merged prefix (Km tokens, 0 without merge slots), the tokens before the segment, the rest of
    the image's kept tokens, the tokens after — so the merge slots stay a prefix of the reduced sequence
    (reduce_tokens' default). Without: the sequence's own layout, [before | the image's kept tokens |
    after], which a region wider than attention needs (its slices and concatenations keep the layout);
    reduce it with reduce_tokens(..., merge_at=start).
    """
    bs, n, m = sel.src.shape
    k = sel.kept.shape[1]
    if isinstance(start, int) and isinstance(seq_len, int) and start == 0 and n == seq_len:
        return sel   # a run-time start or length (SymInt under export: text read per sample) never branches
    dev = sel.kept.device
    km = 0 if sel.msrc is None or not merges_first else sel.msrc.shape[1]
    after_n = seq_len - start - n
    before = torch.arange(start, device=dev)[None].expand(bs, start)
    after = torch.arange(start + n, seq_len, device=dev)[None].expand(bs, after_n)
    img_kept = sel.kept.expand(bs, k) + start
    kept = torch.cat([img_kept[:, :km], before, img_kept[:, km:], after], 1)
    img_src = torch.where(sel.src < km, sel.src, sel.src + start)
    src = torch.cat([(before + km)[..., None].expand(bs, start, m), img_src,
                     (torch.arange(after_n, device=dev) + start + k)[None, :, None].expand(bs, after_n, m)], 1)
    w = None
    if sel.w is not None:
        one = F.pad(torch.ones(1, 1, 1, dtype=sel.w.dtype, device=dev), (0, m - 1))
        w = torch.cat([one.expand(sel.w.shape[0], start, m), sel.w, one.expand(sel.w.shape[0], after_n, m)], 1)
    msrc = None if sel.msrc is None else sel.msrc + start
    wtok = None if sel.wtok is None else sel.wtok + start
    sizes = None
    if sel.sizes is not None:
        ones = torch.ones(1, 1, dtype=sel.sizes.dtype, device=dev).expand(sel.sizes.shape[0], seq_len)
        sizes = torch.cat([sel.sizes[:, :km], ones[:, :start], sel.sizes[:, km:], ones[:, :after_n]], 1)
    return Selection(kept, src, w, msrc, sel.mw, wtok, sel.wmix, sizes)


def _gather_mask(mask: torch.Tensor, sel: Selection, q_len: int, kv_len: int, reduce_q: bool) -> torch.Tensor:
    bs = sel.kept.shape[0]
    if mask.shape[-1] == kv_len and kv_len > 1:
        mask = take_tokens(mask.expand(max(mask.shape[0], bs), *mask.shape[1:]), sel.kept, -1)
    if reduce_q and mask.dim() >= 2 and mask.shape[-2] == q_len and q_len > 1:
        mask = take_tokens(mask.expand(max(mask.shape[0], bs), *mask.shape[1:]), sel.kept, -2)
    return mask


ONE_HOT_ELEMENTS = 1 << 22  # per sample: _weighted_counts builds its one-hot in chunks below this


def _weighted_counts(idx: torch.Tensor, w: torch.Tensor, length: int) -> torch.Tensor:
    """[Bs, length]: out[b, j] = sum_l w[b, l] * [idx[b, l] == j], for idx / w [Bs or 1, L]. A histogram with
    static shapes: one-hot comparisons contracted with the weights (chunked), no scatter_add / index_put."""
    bs = max(idx.shape[0], w.shape[0])
    n = idx.shape[1]
    idx, w = idx.reshape(-1, n, 1).expand(bs, n, 1), w.reshape(-1, 1, n).expand(bs, 1, n)
    chunk = max(1, ONE_HOT_ELEMENTS // n)
    parts = []
    for j0 in range(0, length, chunk):
        cols = torch.arange(j0, min(length, j0 + chunk), device=idx.device)
        parts.append(torch.bmm(w, (idx == cols).to(w.dtype)).squeeze(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def token_sizes(sel: Selection, reduce_q: bool = True, merge_at: int = 0) -> torch.Tensor:
    """[Bs, k] float32: how many full-length tokens each reduced token stands for (the sizes sum to N).

    reduce_q: the column sums of the reconstruction, s_j = sum_i sum_m w[i, m] * [src[i, m] == j] (a merge
    destination counts its sources, a kept token the pruned ones rebuilt from it); a selection that carries
    them (sel.sizes: ToMe / DiTo, whose merges know their sizes) is read, not counted. k/v-only methods
    reconstruct nothing: a reduced token counts the tokens merged into it (nonzero merge weights), each
    divided by the number of merges it enters (overlapping pooling bins); a gathered token counts 1;
    merge_at: where the merged tokens sit in the reduced sequence (reduce_tokens' merge_at).
    """
    k = sel.kept.shape[1]
    if reduce_q and sel.sizes is not None:
        return sel.sizes
    if reduce_q:
        n, m = sel.src.shape[1:]
        w = torch.ones(1, n * m, device=sel.src.device) if sel.w is None else sel.w.float().reshape(-1, n * m)
        return _weighted_counts(sel.src.reshape(-1, n * m), w, k)
    ones = torch.ones(sel.kept.shape, device=sel.kept.device)
    if sel.msrc is None:
        return ones
    km, r = sel.msrc.shape[1:]
    member = (sel.mw > 0).float().expand(sel.msrc.shape[0], km, r).reshape(-1, km * r)
    cover = _weighted_counts(sel.msrc.reshape(-1, km * r), member, sel.src.shape[1])   # merges per token
    merged = (member / take_tokens(cover[..., None], sel.msrc.reshape(-1, km * r), 1)[..., 0].clamp(min=1))
    merged = merged.reshape(-1, km, r).sum(-1)
    if km == k:
        return merged
    ones = ones[:, :1].expand(merged.shape[0], k)
    return torch.cat([ones[:, :merge_at], merged, ones[:, merge_at + km:]], 1)


def with_size_bias(attn_mask: torch.Tensor | None, sel: Selection, query: torch.Tensor,
                   reduce_q: bool = True, merge_at: int = 0) -> torch.Tensor:
    """Proportional attention (ToMe): the float attn_mask that adds log s_j to every logit of key j, s_j its
    token size (token_sizes), on top of attn_mask (a boolean mask becomes 0 / -inf). A key standing for s
    tokens then weighs as s copies, so the image segment keeps its share of a softmax it shares with text
    tokens (joint attention). Shape [Bs, 1, 1, k] broadcast over heads and queries: still one sdpa."""
    bias = torch.log(token_sizes(sel, reduce_q, merge_at).clamp(min=1e-6)).to(query.dtype)
    bias = bias.reshape(bias.shape[0], *([1] * (query.dim() - 2)), bias.shape[1])
    if attn_mask is None:
        return bias
    if attn_mask.dtype == torch.bool:
        attn_mask = torch.where(attn_mask, 0.0, float("-inf")).to(query.dtype)
    return attn_mask + bias


def _reduce_heads(x: torch.Tensor, sel: Selection) -> torch.Tensor:
    """reduce_tokens of a [B, H, L, D] tensor; one laid out [B, L, H, D] in memory (the view + transpose of
    a projection, what attention modules pass sdpa) is reduced in that order: rows of H·D, not of D."""
    if x.dim() == 4 and x.transpose(1, 2).is_contiguous():
        return reduce_tokens(x.transpose(1, 2), sel, dim=1).transpose(1, 2)
    return reduce_tokens(x, sel)


def attention_region(q, k, v, attn_mask, kept, src, w=None, msrc=None, mw=None, wtok=None, wmix=None, sizes=None, *,
                     reduce_q: bool = True, dropout_p: float = 0.0, is_causal: bool = False,
                     scale: float | None = None, enable_gqa: bool = False, prop_attn: bool = False):
    """reduce -> one sdpa on the kept tokens -> reconstruct the full-length output.

    q, k, v: [B, H, L, D] as aten.scaled_dot_product_attention takes them; the selection covers the
    whole sequence (see embed_in_sequence). With reduce_q=False only k/v are reduced (ToDo-style) and
    nothing is reconstructed. A selection with k == L is the identity: plain sdpa, no gather.
    prop_attn: add log(token size) to each kept key's logits (with_size_bias; docs/methods.md).
    """
    sel = Selection(kept, src, w, msrc, mw, wtok, wmix, sizes)
    q_len, kv_len = q.shape[-2], k.shape[-2]
    kwargs = {"scale": scale} if scale is not None else {}
    if enable_gqa:
        kwargs["enable_gqa"] = True
    if is_identity(sel, kv_len):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, **kwargs)
    kr, vr = _reduce_heads(k, sel), _reduce_heads(v, sel)
    qr = _reduce_heads(q, sel) if reduce_q else q
    if attn_mask is not None:
        attn_mask = _gather_mask(attn_mask, sel, q_len, kv_len, reduce_q)
    if prop_attn:
        attn_mask = with_size_bias(attn_mask, sel, qr, reduce_q)
    y = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                       **kwargs)
    if not reduce_q:
        return y
    if y.dim() == 4:
        # reconstruct in [B, L, H, D] memory order, the layout sdpa's CPU/GPU kernels return, so the
        # graph's following transpose + view stays valid
        return reconstruct_tokens(y.transpose(1, 2), sel, dim=1).transpose(1, 2)
    return reconstruct_tokens(y, sel)


def attention_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int, v_dim: int | None = None) -> int:
    """Forward FLOPs of softmax(Q K^T) V as torch.utils.flop_counter.sdpa_flop_count counts them."""
    v_dim = head_dim if v_dim is None else v_dim
    return 2 * batch * heads * q_len * kv_len * head_dim + 2 * batch * heads * q_len * kv_len * v_dim
