import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ditreduce.methods.tome import tome_select
from ditreduce.methods.uniform import uniform_selection
from ditreduce.regions import (attention_region, embed_in_sequence, identity_selection, reconstruct_tokens,
                               reduce_tokens, size_forms, take_tokens)


def _reference_reconstruct(y, src, w):
    b, n, m = src.shape[0], src.shape[1], src.shape[2]
    out = torch.zeros(y.shape[0], n, y.shape[-1])
    for bi in range(y.shape[0]):
        for i in range(n):
            for j in range(m):
                out[bi, i] += w[min(bi, b - 1), i, j] * y[bi, src[min(bi, b - 1), i, j]]
    return out


@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), n=st.integers(1, 9), k=st.integers(1, 12),
       shared=st.booleans(), transposed=st.booleans(), seed=st.integers(0, 2**16), large=st.booleans())
def test_take_tokens_is_indexing_along_the_dim(lead, n, k, shared, transposed, seed, large):
    """take_tokens(x, idx, dim) == x[..., idx[b], ...] per leading batch row b, for a shared or per-sample idx,
    on contiguous x and on a transposed view (the [B, H, L, D] view of a [B, L, H, D] projection), in the
    small-tensor form (index_select along dim) and the large one (a dim-0 row gather, the index folded)."""
    g = torch.Generator().manual_seed(seed)
    dim = len(lead)
    x = torch.randn(*lead, n, 3, 2, generator=g)
    if transposed:
        x = x.transpose(dim, dim + 1).contiguous().transpose(dim, dim + 1)   # same values, strided
    bs = 1 if shared or dim == 0 else lead[0]
    idx = torch.randint(0, n, (bs, k), generator=g)
    with size_forms(large):
        out = take_tokens(x, idx, dim)
    assert out.shape == (*lead, k, 3, 2)
    for b in range(lead[0] if dim else 1):
        sel = idx[min(b, bs - 1)]
        ref = x.index_select(dim, sel)
        assert torch.equal(out[b] if dim else out, ref[b] if dim else ref)


def test_reconstruct_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 3, generator=g)
    src = torch.randint(0, 5, (2, 9, 3), generator=g)
    w = torch.softmax(torch.randn(2, 9, 3, generator=g), -1)
    from ditreduce.regions import Selection

    sel = Selection(torch.arange(5).expand(2, 5), src, w)
    torch.testing.assert_close(reconstruct_tokens(y, sel, dim=1), _reference_reconstruct(y, src, w))


def test_identity_region_is_exact():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 12, 8, generator=g) for _ in range(3))
    sel = identity_selection(12)
    out = attention_region(q, k, v, None, *sel)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(2, 12), w=st.integers(2, 12), frac=st.floats(0.05, 1.0), video=st.booleans())
def test_uniform_selection_invariants(h, w, frac, video):
    lattice = (2, h, w) if video else (h, w)
    n = math.prod(lattice)
    k = max(1, round(frac * n))
    sel = uniform_selection(lattice, k)
    kept = sel.kept[0]
    assert kept.shape == (k,) and torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) == k
    src = sel.src[0, :, 0]
    assert torch.equal(src[kept], torch.arange(k))  # a kept token maps to itself
    assert sel.w is None  # one slot of weight 1
    # every pruned token copies its nearest kept neighbour
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in lattice], indexing="ij"), -1).reshape(n, -1).float()
    d = torch.cdist(coords, coords[kept])
    assert torch.allclose(d.gather(1, src[:, None])[:, 0], d.min(1).values)


def test_uniform_pattern_is_spread_evenly():
    sel = uniform_selection((16, 16), 64)
    m = torch.zeros(256)
    m[sel.kept[0]] = 1
    per_quadrant = m.view(2, 8, 2, 8).sum((1, 3))
    assert torch.all(per_quadrant == 16)


@pytest.mark.parametrize("start,seq", [(0, 20), (4, 20), (0, 16), (3, 19)])
def test_embed_in_sequence_keeps_other_tokens(start, seq):
    sel = uniform_selection((4, 4), 8)
    full = embed_in_sequence(sel, start, seq)
    x = torch.randn(1, seq, 4)
    red = reduce_tokens(x, full, dim=1)
    assert red.shape[1] == seq - 8
    rec = reconstruct_tokens(red, full, dim=1)
    text_pos = [i for i in range(seq) if not start <= i < start + 16]
    torch.testing.assert_close(rec[:, text_pos], x[:, text_pos])
    img = rec[:, start:start + 16]
    copied_from = sel.kept[0][sel.src[0, :, 0]]  # image token i copies kept token kept[src[i]]
    torch.testing.assert_close(img, x[:, start:start + 16][:, copied_from])


@pytest.mark.parametrize("start,seq", [(0, 20), (4, 20), (3, 22)])
def test_embed_in_layout_keeps_the_sequence_order(start, seq):
    """merges_first=False: the reduced sequence is [before | the image's reduced tokens | after], what a
    wider region's slices and the model's own concatenations expect; reduce_tokens places the merges at
    merge_at = start."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, seq, 4, generator=g)
    sel = tome_select(x[:, start:start + 16], (4, 4), 10)
    full = embed_in_sequence(sel, start, seq, merges_first=False)
    red = reduce_tokens(x, full, 1, merge_at=start)
    img = reduce_tokens(x[:, start:start + 16], sel, 1)
    torch.testing.assert_close(red, torch.cat([x[:, :start], img, x[:, start + 16:]], 1))
    torch.testing.assert_close(reconstruct_tokens(red, full, 1),
                               torch.cat([x[:, :start], reconstruct_tokens(img, sel, 1), x[:, start + 16:]], 1))


@pytest.mark.parametrize("q_rows", [False, True])
def test_mask_is_gathered_along_kv(q_rows):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 10, 4, generator=g) for _ in range(3))
    sel = embed_in_sequence(uniform_selection((2, 4), 4), 2, 10)  # half the image, text first
    kept, src = sel.kept[0], sel.src[0, :, 0]
    mask = torch.ones(1, 1, 10 if q_rows else 1, 10, dtype=torch.bool)
    mask[..., kept[[1, 3]]] = False  # kept keys (image and text) that must stay masked at their new places
    if q_rows:
        mask[..., kept[2], :] = True
    out = attention_region(q, k, v, mask, *sel)
    qr, kr, vr = q[:, :, kept], k[:, :, kept], v[:, :, kept]
    m = mask[..., kept] if not q_rows else mask[..., kept, :][..., kept]
    ref = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=m)[:, :, src]  # copy back: token i <- kept[src[i]]
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(ref, F.scaled_dot_product_attention(qr, kr, vr)[:, :, src], atol=1e-3)


def test_build_switches_hold_in_their_own_thread_only():
    """forced_regions / pointwise_products / size_forms set how the variants of the thread that sets them are
    built: another thread building at the same time sees the defaults."""
    import threading

    from ditreduce import regions

    seen, entered, checked = {}, threading.Barrier(2), threading.Barrier(2)

    def switching():
        with regions.forced_regions(), regions.pointwise_products(), regions.size_forms(True):
            entered.wait()
            checked.wait()
            seen["own"] = (regions.regions_forced(), regions._FORMS.pointwise, regions.is_large(1, 1 << 40))

    def other():
        entered.wait()
        seen["other"] = (regions.regions_forced(), regions._FORMS.pointwise, regions.is_large(1, 1 << 40))
        checked.wait()

    threads = [threading.Thread(target=switching), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"own": (True, True, True), "other": (False, False, False)}
