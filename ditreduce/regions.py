"""Region math: pure tensor functions, no FX inside, written to lower to ONNX / TensorRT.

The region ABI (see README "Region ABI"):

    Selection.kept  LongTensor[Bs, k]      which tokens of a sequence enter attention (sorted)
    Selection.src   LongTensor[Bs, N, M]   for each of the N tokens, M slots into the kept outputs
    Selection.w     Tensor[Bs, N, M]       slot weights; rows sum to 1; a kept token maps to itself, weight 1

    reduce(x, sel)           = gather(x, kept)                            # [..., k, C]
    reconstruct(y_kept, sel) = sum_m w[..., m] * gather(y_kept, src[..., m])   # [..., N, C]

Bs is 1 (one pattern for the whole batch) or B. Everything is a gather with static sizes: no
scatter, no boolean mask, no data-dependent shape. The sequence positions of text tokens are part of
the selection (they are always kept and map to themselves), so one gather serves joint attention.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Selection(NamedTuple):
    kept: torch.Tensor  # [Bs, k] int64
    src: torch.Tensor   # [Bs, N, M] int64
    w: torch.Tensor     # [Bs, N, M] float


def identity_selection(n: int, device=None) -> Selection:
    """Ratio zero: every token kept, each maps to itself with weight 1 (the same ops run, exactly)."""
    ar = torch.arange(n, device=device)
    return Selection(ar[None], ar[None, :, None], torch.ones(1, n, 1, device=device))


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """x[..., idx, ...] along `dim` where idx is [Bs, k] and x's batch dim is 0."""
    dim = dim % x.dim()
    shape = [1] * x.dim()
    shape[0], shape[dim] = idx.shape[0], idx.shape[1]
    index = idx.view(shape).expand(*[x.shape[d] if d != dim else idx.shape[1] for d in range(x.dim())])
    return torch.gather(x, dim, index)


def reduce_tokens(x: torch.Tensor, sel: Selection, dim: int = -2) -> torch.Tensor:
    return _gather_tokens(x, sel.kept, dim)


def reconstruct_tokens(y: torch.Tensor, sel: Selection, dim: int = -2) -> torch.Tensor:
    """Full-length output from kept outputs: out[i] = sum_m w[i, m] * y[src[i, m]]."""
    bs, n, m = sel.src.shape
    out = None
    for j in range(m):  # M is small and static: M gathers, no scatter
        g = _gather_tokens(y, sel.src[:, :, j], dim)
        wj = sel.w[:, :, j].to(y.dtype)
        shape = [1] * y.dim()
        shape[0], shape[dim % y.dim()] = bs, n
        term = g * wj.view(shape)
        out = term if out is None else out + term
    return out


def embed_in_sequence(sel: Selection, start: int, seq_len: int) -> Selection:
    """Lift a selection over an image segment [start, start+n) to the whole sequence of seq_len tokens.

    Tokens outside the segment are always kept and map to themselves; the kept order stays sequence order.
    """
    bs, n, m = sel.src.shape
    k = sel.kept.shape[1]
    dev = sel.kept.device
    before = torch.arange(start, device=dev).expand(bs, start)
    after_n = seq_len - start - n
    after = torch.arange(start + n, seq_len, device=dev).expand(bs, after_n)
    kept = torch.cat([before, sel.kept + start, after], dim=1)
    src_before = before.unsqueeze(-1).expand(bs, start, m)
    src_after = (torch.arange(after_n, device=dev) + start + k).expand(bs, after_n).unsqueeze(-1).expand(bs, after_n, m)
    src = torch.cat([src_before, sel.src + start, src_after], dim=1)
    w_fixed = F.pad(torch.ones(bs, 1, 1, dtype=sel.w.dtype, device=dev), (0, m - 1))
    w = torch.cat([w_fixed.expand(bs, start, m), sel.w, w_fixed.expand(bs, after_n, m)], dim=1)
    return Selection(kept, src, w)


def _gather_mask(mask: torch.Tensor, sel: Selection, q_len: int, kv_len: int, reduce_q: bool) -> torch.Tensor:
    if mask.shape[-1] == kv_len and kv_len > 1:
        mask = _gather_tokens(mask.expand(max(mask.shape[0], sel.kept.shape[0]), *mask.shape[1:]), sel.kept, -1)
    if reduce_q and mask.dim() >= 2 and mask.shape[-2] == q_len and q_len > 1:
        mask = _gather_tokens(mask.expand(max(mask.shape[0], sel.kept.shape[0]), *mask.shape[1:]), sel.kept, -2)
    return mask


def attention_region(q, k, v, attn_mask, kept, src, w, *, reduce_q: bool = True, dropout_p: float = 0.0,
                     is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False):
    """reduce -> one sdpa on the kept tokens -> reconstruct the full-length output.

    q, k, v: [B, H, L, D] as aten.scaled_dot_product_attention takes them; the selection covers the
    whole sequence (see embed_in_sequence). With reduce_q=False only k/v are reduced (ToDo-style) and
    nothing is reconstructed.
    """
    sel = Selection(kept, src, w)
    q_len, kv_len = q.shape[-2], k.shape[-2]
    kr, vr = reduce_tokens(k, sel), reduce_tokens(v, sel)
    qr = reduce_tokens(q, sel) if reduce_q else q
    if attn_mask is not None:
        attn_mask = _gather_mask(attn_mask, sel, q_len, kv_len, reduce_q)
    kwargs = {"scale": scale} if scale is not None else {}
    if enable_gqa:
        kwargs["enable_gqa"] = True
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
