"""Independent references at k < N, written from the definitions in plain loops: the region, every
scope on a hand-written DiT, ToMe's matching, CoReDiT's pruning and weights, ToDo's pooling, DiTo's
matching from the previous outputs. The implementation only supplies the selection under test (through
the public method entry); everything it is checked against is computed here."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from ditreduce import compile_with_reduction
from ditreduce.methods import get_method
from ditreduce.methods.dito import dito_match, dito_selection
from ditreduce.regions import Selection, attention_region, embed_in_sequence, reconstruct_tokens, reduce_tokens


def _g(seed):
    return torch.Generator().manual_seed(seed)


def _fhw(lattice):
    return (1, *lattice) if len(lattice) == 2 else tuple(lattice)


# --- the region ABI, by its definition ------------------------------------------------------------
def ref_reduce(x, sel, b):
    """x [L, C] of sample b -> [k, C]: merge rows (sum_r mw * x[msrc]) first, then gathers of kept."""
    i = min(b, sel.kept.shape[0] - 1)
    km = 0 if sel.msrc is None else sel.msrc.shape[1]
    rows = []
    for j, tok in enumerate(sel.kept[i].tolist()):
        if j < km:
            mi, wi = min(b, sel.msrc.shape[0] - 1), min(b, sel.mw.shape[0] - 1)
            rows.append(sum(float(sel.mw[wi, j, r]) * x[int(sel.msrc[mi, j, r])] for r in range(sel.msrc.shape[2])))
        else:
            rows.append(x[tok])
    return torch.stack(rows)


def ref_reconstruct(y, sel, b):
    """y [k, C] of sample b -> [L, C]: out[i] = sum_m w[i, m] * y[src[i, m]]."""
    i = min(b, sel.src.shape[0] - 1)
    out = torch.zeros(sel.src.shape[1], y.shape[-1], dtype=y.dtype)
    for t in range(sel.src.shape[1]):
        for m in range(sel.src.shape[2]):
            w = 1.0 if sel.w is None else float(sel.w[min(b, sel.w.shape[0] - 1), t, m])
            out[t] += w * y[int(sel.src[i, t, m])]
    return out


def ref_attention(q, k, v, mask=None, scale=None):
    """softmax(q kᵀ · s + mask) v on [L, D] tensors; a bool mask is True where attention is allowed."""
    s = q @ k.T * (scale if scale is not None else q.shape[-1] ** -0.5)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


def ref_region(q, k, v, mask, sel, reduce_q=True):
    """[B, H, L, D]: reduce q/k/v, attend with the mask's rows / columns at the kept tokens, reconstruct."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        kept = sel.kept[min(b, sel.kept.shape[0] - 1)].tolist()
        for h in range(q.shape[1]):
            m = None
            if mask is not None:
                m = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])[b, h]
                m = m[:, kept]
                if reduce_q:
                    m = m[kept]
            qr = ref_reduce(q[b, h], sel, b) if reduce_q else q[b, h]
            y = ref_attention(qr, ref_reduce(k[b, h], sel, b), ref_reduce(v[b, h], sel, b), m)
            out[b, h] = ref_reconstruct(y, sel, b) if reduce_q else y
    return out


def _selections(b, text, lattice):
    """(selection over the whole sequence, reduce_q) of every method at ratio 0.5, text tokens first."""
    n = math.prod(lattice)
    x = torch.randn(b, n, 8, generator=_g(5))
    out = {}
    for name in ("uniform", "random", "coredit", "tome", "todo"):
        params = {"slots": 3} if name == "coredit" else {}
        meth = get_method(name)(cfg="per_sample", **params) if name in ("coredit", "tome") else get_method(name)()
        sel, _ = meth.select(x, lattice, meth.kept_count(n, n // 2, lattice))
        out[name] = (embed_in_sequence(sel, text, text + n), meth.reduces_q)
    return out


@pytest.mark.parametrize("mask_kind", ["none", "bool_kv", "float_qkv"])
@pytest.mark.parametrize("method", ["uniform", "random", "coredit", "tome", "todo"])
def test_region_matches_the_loop_reference(method, mask_kind):
    b, heads, text, lattice = 2, 2, 3, (4, 5)
    length = text + math.prod(lattice)
    sel, reduce_q = _selections(b, text, lattice)[method]
    g = _g(6)
    q, k, v = (torch.randn(b, heads, length, 4, generator=g) for _ in range(3))
    mask = None
    if mask_kind == "bool_kv":  # masked keys among the kept image tokens and the text
        mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
        drop = sel.kept[0, [1, 4, -2]]
        mask[0, ..., drop] = False
        mask[1, ..., 0] = False
    elif mask_kind == "float_qkv":
        mask = torch.randn(b, heads, length, length, generator=g) * 3
    out = attention_region(q, k, v, mask, *sel, reduce_q=reduce_q)
    ref = ref_region(q, k, v, mask, sel, reduce_q)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if mask is not None:  # the mask's gathered entries change the result
        assert not torch.allclose(ref, ref_region(q, k, v, None, sel, reduce_q), atol=1e-3)


# --- the scopes on a hand-written DiT ---------------------------------------------------------------
def _patchify(m, hidden):
    b, c, hh, ww = hidden.shape
    p = m.p
    return hidden.view(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)


def _unpatchify(m, x, hh, ww):
    b, p, c = x.shape[0], m.p, m.c
    return m.out(x).view(b, hh // p, ww // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hh, ww)


def _per_sample(fn, x, sel):
    return torch.stack([fn(x[b], sel, b) for b in range(x.shape[0])])


def ref_handdit(m, hidden, timestep, scope, select):
    """zoo.HandDiT's forward with each block's site reduced in `scope`; select(tokens [B, N, C]) gives the
    selection from the tensor the scope scores (values / region input / block input)."""
    _, _, hh, ww = hidden.shape
    x = m.embed(_patchify(m, hidden))
    t = m.t_embed(timestep.float().view(-1, 1) / 1000)
    b, n, c = x.shape
    for blk in m.blocks:
        att, heads = blk.attn, blk.attn.heads
        if scope == "block":
            sel = select(x)
            xr = _per_sample(ref_reduce, x, sel)
            x = x + _per_sample(ref_reconstruct, blk(xr, t) - xr, sel)
            continue
        h = blk.norm1(x) * (1 + t[:, None])

        def qkv(z):
            return att.qkv(z).view(b, z.shape[1], 3, heads, c // heads).permute(2, 0, 3, 1, 4)

        if scope == "attention":
            q, k, v = qkv(h)
            sel = select(v.transpose(1, 2).reshape(b, n, c))
            meth_q = sel[1]
            o = ref_region(q, k, v, None, sel[0], meth_q)
            a = att.proj(o.transpose(1, 2).reshape(b, n, c))
        else:  # attention+proj: reduce the projections' input, reconstruct after the output projection
            sel = select(h)
            hr = _per_sample(ref_reduce, h, sel)
            q, k, v = qkv(hr)
            o = torch.stack([torch.stack([ref_attention(q[i, j], k[i, j], v[i, j]) for j in range(heads)])
                             for i in range(b)])
            a = _per_sample(ref_reconstruct, att.proj(o.transpose(1, 2).reshape(b, hr.shape[1], c)), sel)
        x = x + a
        x = x + blk.mlp(blk.norm2(x))
    return _unpatchify(m, x, hh, ww)


SCOPE_CASES = [(m, s, {}) for m in ("uniform", "random", "coredit", "tome") for s in ("attention", "attention+proj", "block")]
SCOPE_CASES += [("todo", "attention", {}), ("coredit", "attention+proj", {"slots": 3, "pool": False}),
                ("coredit", "block", {"slots": 8})]


@pytest.mark.parametrize("method,scope,params", SCOPE_CASES)
def test_scope_matches_the_reference_on_a_hand_written_dit(method, scope, params):
    lattice = (4, 6)
    model, kw = zoo.handdit(grid=lattice, batch=2)
    sched = {"method": method, "ratio": 0.5, "scope": scope, "params": {method: params}}
    with torch.no_grad():
        reduced = compile_with_reduction(model, sched)
        out = reduced(**kw)[0]
        cfgs = reduced.last_key
        assert all(c is not None and c.k < c.n and c.scope == scope for c in cfgs)
        meth = get_method(method)(**params)
        k = cfgs[0].k

        def select(tokens):
            sel, _ = meth.select(tokens, lattice, k)
            return (sel, meth.reduces_q) if scope == "attention" else sel

        ref = ref_handdit(model, kw["hidden_states"], kw["timestep"], scope, select)
        assert not torch.allclose(out, model(**kw)[0], atol=1e-4)  # it really reduced
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
