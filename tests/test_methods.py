"""The methods against references: coherence score, reconstruction, ToMe merge / unmerge, ToDo pooling,
seeds, lowering limits, scopes and FLOPs."""
import math

import pytest
import torch
import torch.nn.functional as F

import zoo
from ditreduce import ScheduleError, compile_with_reduction
from ditreduce.flops import count_flops
from ditreduce.methods import get_method
from ditreduce.methods.coredit import CoReDiT, coherence, coredit_select
from ditreduce.methods.dito import dito_match, dito_prime_selection, dito_selection
from ditreduce.methods.lattice import MAX_TOPK, grouped_k, neighbour_cosines, neighbour_table
from ditreduce.methods.todo import todo_selection
from ditreduce.methods.tome import tome_kept, tome_select
from ditreduce.regions import forced_regions, reconstruct_tokens, reduce_tokens

LATTICES = [(5, 7), (6, 6), (2, 3, 5)]
FULL_SELECTIONS = [("coredit", {}), ("coredit", {"pool": False}), ("coredit", {"slots": 3}), ("tome", {}),
                   ("todo", {}), ("todo", {"mode": "nearest"}), ("random", {}), ("uniform", {})]


def _brute_coherence(x, lattice):
    f, h, w = (1, *lattice) if len(lattice) == 2 else lattice
    xs = x.reshape(x.shape[0], f, h, w, -1)
    out = torch.zeros(x.shape[0], f, h, w)
    for fi in range(f):
        for y in range(h):
            for xx in range(w):
                sims = [F.cosine_similarity(xs[:, fi, y, xx], xs[:, fi, y + dy, xx + dx], dim=-1)
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                        if (dy or dx) and 0 <= y + dy < h and 0 <= xx + dx < w]
                out[:, fi, y, xx] = torch.stack(sims).mean(0)
    return out.reshape(x.shape[0], -1)


@pytest.mark.parametrize("lattice", LATTICES)
def test_coherence_matches_brute_force(lattice):
    x = torch.randn(2, math.prod(lattice), 12, generator=torch.Generator().manual_seed(0))
    _, valid = neighbour_table(lattice)
    torch.testing.assert_close(coherence(neighbour_cosines(x, lattice), valid), _brute_coherence(x, lattice))


@pytest.mark.parametrize("lattice", LATTICES)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
@pytest.mark.parametrize("params", [{}, {"slots": 3}, {"slots": 8, "pool": False}])
def test_coredit_structure(lattice, ratio, params):
    n = math.prod(lattice)
    meth = CoReDiT(cfg="per_sample", **params)  # {}: the method's defaults (one slot, pooled)
    k = meth.kept_count(n, n - round(ratio * n), lattice)
    x = torch.randn(3, n, 8, generator=torch.Generator().manual_seed(1))
    sel = meth.select(x, lattice, k)
    assert sel.kept.shape == (3, k)
    w = torch.ones(sel.src.shape) if sel.w is None else sel.w
    nbr, valid = neighbour_table(lattice)
    for b in range(3):
        kept = set(sel.kept[b].tolist())
        assert len(kept) == k
        torch.testing.assert_close(w[b].sum(-1), torch.ones(n))  # rows sum to 1
        for i in range(n):
            used = w[b, i] > 0
            sources = sel.kept[b, sel.src[b, i][used]].tolist()
            if i in kept:
                assert sources == [i]
            else:  # a pruned token aggregates only retained in-frame neighbours
                assert any(nbr[i, d].item() in kept for d in range(8) if valid[i, d])
                assert sources and all(s in nbr[i][valid[i]].tolist() for s in sources)
        if sel.msrc is not None:  # pooled: each reduced token mixes itself and in-frame neighbours, rows sum to 1
            torch.testing.assert_close(sel.mw[b].sum(-1), torch.ones(k))
            for j, tok in enumerate(sel.kept[b].tolist()):
                mixed = sel.msrc[b, j][sel.mw[b, j] > 0].tolist()
                assert sel.msrc[b, j, 0] == tok and set(mixed) <= {tok, *nbr[tok][valid[tok]].tolist()}


def test_coredit_prunes_the_coherent_tokens():
    # left half constant (coherent), right half noise: pruning takes the left half first
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 8, 16, generator=g)
    x[:, :, :4] = torch.randn(16, generator=g)
    sel = coredit_select(x.reshape(1, 64, 16), (8, 8), 48)
    kept = torch.zeros(64, dtype=torch.bool)
    kept[sel.kept[0]] = True
    kept = kept.reshape(8, 8)
    assert (~kept[:, :4]).sum() == 16  # all 16 pruned tokens come from the coherent half


@pytest.mark.parametrize("lattice", LATTICES)
@pytest.mark.parametrize("slots", [1, 3])
def test_constant_lattice_reconstructs_exactly(lattice, slots):
    n = math.prod(lattice)
    x = torch.randn(1, 1, 6).expand(2, n, 6).contiguous()
    sel = coredit_select(x, lattice, grouped_k(n, n // 2), slots=slots)
    rec = reconstruct_tokens(reduce_tokens(x, sel, 1), sel, 1)
    torch.testing.assert_close(rec, x)


@pytest.mark.parametrize("lattice", [(6, 8), (5, 7), (2, 4, 6)])
def test_tome_identical_2x2_groups_merge_and_unmerge_exactly(lattice):
    f, h, w = (1, *lattice) if len(lattice) == 2 else lattice
    g = torch.Generator().manual_seed(3)
    per_window = torch.randn(2, f, math.ceil(h / 2), math.ceil(w / 2), 8, generator=g)
    x = per_window.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :h, :w].reshape(2, f * h * w, 8)
    n = f * h * w
    k = tome_kept(n, n // 2, lattice)
    sel = tome_select(x, lattice, k)
    red = reduce_tokens(x, sel, 1)
    assert red.shape == (2, k, 8)
    torch.testing.assert_close(reconstruct_tokens(red, sel, 1), x)


def test_todo_2x2_is_average_pooling():
    x = torch.randn(2, 36, 5)
    sel = todo_selection((6, 6), 9, "avg")
    ref = F.avg_pool2d(x.transpose(1, 2).reshape(2, 5, 6, 6), 2).reshape(2, 5, 9).transpose(1, 2)
    torch.testing.assert_close(reduce_tokens(x, sel, 1), ref)


@pytest.mark.parametrize("lattice", LATTICES)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.75])
@pytest.mark.parametrize("mode", ["avg", "nearest"])
def test_todo_pools_with_weights_summing_to_one(lattice, ratio, mode):
    """What a k/v-only method promises (Method.reduces_q): each reduced token is a convex combination of
    tokens, so a constant token reduces to itself — and pooling commutes with an affine k/v projection."""
    n = math.prod(lattice)
    k = get_method("todo")(mode=mode).kept_count(n, n - round(ratio * n), lattice)
    sel = todo_selection(lattice, k, mode)
    assert sel.kept.shape[1] < n
    torch.testing.assert_close(sel.mw.sum(-1), torch.ones(sel.mw.shape[:2]))
    x, lin = torch.randn(2, n, 6), torch.nn.Linear(6, 4)
    torch.testing.assert_close(lin(reduce_tokens(x, sel, 1)), reduce_tokens(lin(x), sel, 1))


@pytest.mark.parametrize("method", ["tome", "random"])
def test_same_seed_same_output_other_seed_differs(method):
    model, kw = zoo.build("pixart", grid=(6, 6))
    kw = dict(kw, return_dict=False)
    outs = []
    with torch.no_grad():
        for seed in (0, 0, 1):
            r = compile_with_reduction(model, {"method": method, "ratio": 0.5, "params": {method: {"seed": seed}}})
            outs.append(r(**kw)[0])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_cfg_shared_selects_identically_in_both_halves():
    x = torch.randn(4, 36, 8)
    sel = coredit_select(x, (6, 6), 18, cfg="shared")
    assert torch.equal(sel.kept[:2], sel.kept[2:])
    assert not torch.equal(coredit_select(x, (6, 6), 18).kept[0], coredit_select(x, (6, 6), 18).kept[2])


@pytest.mark.parametrize("family", ["pixart", "sd3", "flux", "cogvideox", "wan", "handdit"])
def test_attention_proj_equals_attention_for_the_same_kept_set(family):
    model, kw = zoo.build(family)
    kw = kw if family == "handdit" else dict(kw, return_dict=False)
    outs = {}
    with torch.no_grad():
        for scope in ("attention", "attention+proj"):
            r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": scope})
            out = r(**kw)
            outs[scope] = out[0] if isinstance(out, tuple) else out
            rep = r.report()
            assert {rec.scope for rec in rep if rec.reduced} == {scope}
    torch.testing.assert_close(outs["attention"], outs["attention+proj"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["coredit", "tome"])
def test_large_lattices_lower_without_large_topk_or_banned_ops(method):
    # TopKs above TensorRT's limit (3840) at half the 16k cost: CoReDiT keeps 4096, ToMe orders 4608 sources
    lattice = (64, 128) if method == "coredit" else (64, 96)
    n = math.prod(lattice)
    fn = coredit_select if method == "coredit" else tome_select
    k = grouped_k(n, n // 2) if method == "coredit" else tome_kept(n, n // 2, lattice)

    class Select(torch.nn.Module):
        def forward(self, x):
            return tuple(t for t in fn(x, lattice, k) if t is not None)

    ep = torch.export.export(Select(), (torch.randn(2, n, 8),), strict=False)
    ops = [node for node in ep.graph.nodes if node.op == "call_function"]
    topks = [node.args[1] for node in ops if node.target == torch.ops.aten.topk.default]
    assert topks and max(topks) <= MAX_TOPK
    banned = ("scatter_reduce", "scatter_add", "index_put", "nonzero", "masked_select", "sort")
    assert not [str(node.target) for node in ops if any(b in str(node.target) for b in banned)]


@pytest.mark.parametrize("scope", ["attention", "attention+proj", "block"])
@pytest.mark.parametrize("method", ["coredit", "todo"])
def test_report_flops_equal_the_flop_counter(scope, method):
    model, kw = zoo.build("pixart", grid=(6, 6))
    kw = dict(kw, return_dict=False)
    r = compile_with_reduction(model, {"method": method, "ratio": 0.5, "scope": scope}, **kw)
    dense = count_flops(lambda: model(**kw))
    red = count_flops(lambda: r(**kw))
    rep = r.report()
    assert rep.totals() == (dense.attention, red.attention)
    assert rep.model_flops == (dense.whole, red.whole)
    assert red.whole < dense.whole


def test_block_scope_reduces_mlp_and_cross_attention_queries():
    model, kw = zoo.build("pixart", grid=(6, 6))
    kw = dict(kw, return_dict=False)
    flops = {}
    for scope in ("attention+proj", "block"):
        r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": scope}, **kw)
        flops[scope] = r.report().model_flops[1]
    assert flops["block"] < flops["attention+proj"]


def test_ratio_above_the_methods_limit_is_a_schedule_error():
    model, kw = zoo.build("pixart")
    r = compile_with_reduction(model, {"method": "coredit", "ratio": 0.8})
    with pytest.raises(ScheduleError, match="up to 0.75"):
        r(**dict(kw, return_dict=False))


@pytest.mark.parametrize("params,match", [({"coredit": {"tua": 0.1}}, "no parameter"),
                                          ({"coredit": {"cfg": "both"}}, "not one of"),
                                          ({"tome": {"seed": "x"}}, "expected int")])
def test_bad_method_params_are_schedule_errors(params, match):
    from ditreduce import load_schedule

    with pytest.raises(ScheduleError, match=match):
        load_schedule({"method": "coredit", "params": params})


def _full_selection(method, params, x, lattice, forced):
    with forced_regions(forced):
        sel = get_method(method)(**params).select(x, lattice, x.shape[1])
    return sel


def _assert_keeps_every_token_exactly(sel, x, reduces_q):
    n = x.shape[1]
    assert sel.kept.shape[-1] == n and torch.equal(sel.kept.sort(-1).values, torch.arange(n).expand_as(sel.kept))
    reduced = reduce_tokens(x, sel)
    torch.testing.assert_close(reduced, x.index_select(1, sel.kept[0]) if sel.kept.shape[0] == 1 else
                               torch.stack([x[b, sel.kept[b]] for b in range(x.shape[0])]), rtol=0, atol=1e-6)
    if reduces_q:
        torch.testing.assert_close(reconstruct_tokens(reduced, sel), x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("lattice", [(5, 7), (2, 3, 4)])
@pytest.mark.parametrize("method,params", FULL_SELECTIONS)
def test_forced_regions_run_the_real_selection_at_k_equal_n(method, params, lattice):
    """Inside forced_regions() a method asked for every token computes its real selection (the kept order
    its TopK / matching / drawing produces, merge slots with zero weight on other tokens), and reduce →
    reconstruct is exact; outside it the same call is the identity selection."""
    x = torch.randn(2, math.prod(lattice), 6, generator=torch.Generator().manual_seed(0))
    forced = _full_selection(method, params, x, lattice, True)
    _assert_keeps_every_token_exactly(forced, x, get_method(method).reduces_q)
    if method != "todo":  # ToDo's full kv grid keeps the lattice order: one-token pooling cells
        assert not torch.equal(forced.kept, torch.arange(x.shape[1]).expand_as(forced.kept))
    plain = _full_selection(method, params, x, lattice, False)
    assert plain.msrc is None and plain.w is None and torch.equal(plain.kept, torch.arange(x.shape[1])[None])


def test_forced_dito_matches_and_primes_without_merging():
    lattice, x = (4, 6), torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(1))
    merged, unmerged, arg, count = dito_match(x, torch.zeros(2, 18), lattice=lattice, k=24, seed=0, cfg="per_sample",
                                              lam=0.3)
    assert merged.shape == (2, 0) and torch.equal(count, torch.zeros(2, 18))
    matched = dito_selection(merged, unmerged, arg, n=24, lattice=lattice, k=24, seed=0, forced=True)
    primed = dito_prime_selection(n=24, lattice=lattice, seed=0, device=x.device, forced=True)
    for sel in (matched, primed):
        assert sel.msrc is not None
        _assert_keeps_every_token_exactly(sel, x, True)
    assert dito_selection(merged, unmerged, arg, n=24, lattice=lattice, k=24, seed=0).msrc is None
