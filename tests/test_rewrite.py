"""Ratio zero is equivalence; ratio > 0 really runs attention on k tokens; FLOPs drop as reported."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import anydit
import zoo
from ditreduce import compile_with_reduction
from ditreduce.methods import METHODS
from ditreduce.passes.rewrite import region_nodes
from ditreduce.regions import forced_regions

aten = torch.ops.aten
FAMILIES = sorted(set(zoo.ZOO) - {"sana"})


def _call(model, kw):
    out = model(**kw)
    return out[0] if isinstance(out, tuple) else out.sample


def _kw(family, kw):
    return kw if family == "handdit" else dict(kw, return_dict=False)


def _lattice(family, data):
    if family in zoo.VIDEO:
        return (data.draw(st.integers(1, 3)), data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5)))
    if family in ("dit", "hunyuan"):  # these unpatchify square inputs only
        s = data.draw(st.integers(2, 6))
        return (s, s)
    return (data.draw(st.integers(2, 6)), data.draw(st.integers(2, 7)))


# every method, and each branch of CoReDiT's reconstruction (one slot / weighted slots) and reduce (pooled or not)
VARIANTS = [("coredit", {}), ("coredit", {"pool": False}), ("coredit", {"slots": 3}),
            ("coredit", {"slots": 3, "pool": False}), ("tome", {}), ("dito", {}), ("todo", {}),
            ("todo", {"mode": "nearest"}), ("random", {}), ("uniform", {})]
assert {m for m, _ in VARIANTS} == set(METHODS)


SCOPES = ["attention", "attention+proj", "attention+cross", "block"]


def _cfg_batch(kw, batch):
    """A CFG batch: the latents duplicated, the conditioning differs."""
    kw = {k: (torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch
              and k not in ("img_ids", "txt_ids") else v) for k, v in kw.items()}
    if "img_shapes" in kw:
        kw["img_shapes"] = kw["img_shapes"] * 2
    return kw


def _check_forced_run(reduced, out, ref, scope):
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    cap = reduced.last_capture
    gm = cap.variants[reduced.last_key]
    regions = region_nodes(gm)
    selected = [s for s, c in zip(cap.sites, reduced.last_key) if c is not None]
    if scope == "block":  # sites of one block share the block's region (SD3.5: two attentions per block)
        assert 0 < len(regions) <= len(selected)
    else:
        assert len(regions) == len(selected) > 0
    for node in regions:  # every region runs reduce / reconstruct with k = N
        meta = node.meta["ditreduce_region"]
        assert meta["k"] == meta["n"] and meta["kept_seq"] == meta["seq"]


# The stratified grid: family -> (lattice, batch, CFG batch, [(variant index into VARIANTS, scope), ...]). Every
# method variant runs in every scope once (assert below), each family in four cells on one capture. A scope goes
# to families that honour it: attention+cross to those with cross-attention (elsewhere it is attention+proj),
# qwenimage attention only (it keeps the attention scope); ToDo's wide scopes cap at attention+proj or attention.
# Merge selections (CoReDiT pooled, ToMe, DiTo) meet joint text + image sequences (cogvideox, flux, sd3/sd35) in
# the wide scopes, and per-sample selections batches of 2-3 (CFG pairs share a selection: flux, pixart add one).
A, P, C, K = "attention", "attention+proj", "attention+cross", "block"
GRID = {
    "cogvideox": ((1, 2, 3), 2, False, [(1, A), (4, P), (2, K), (5, K)]),
    "dit": ((3, 3), 1, True, [(2, A), (3, P), (1, K), (6, K)]),
    "flux": ((2, 3), 2, True, [(3, A), (5, P), (9, P), (0, K)]),
    "handdit": ((3, 2), 3, False, [(6, A), (2, P), (3, K), (8, K)]),
    "hunyuan": ((3, 3), 1, False, [(0, C), (3, C), (6, C), (9, C)]),
    "pixart": ((2, 3), 2, True, [(1, C), (4, C), (7, C), (6, P)]),
    "qwenimage": ((3, 2), 2, False, [(0, A), (4, A), (5, A), (8, A)]),
    "sd3": ((2, 3), 1, True, [(7, A), (1, P), (7, P), (9, K)]),
    "sd35": ((3, 2), 2, False, [(9, A), (0, P), (4, K), (7, K)]),
    "wan": ((2, 2, 3), 2, False, [(2, C), (5, C), (8, C), (8, P)]),
}
assert set(GRID) == set(FAMILIES) and all(len(c) == 4 for *_, c in GRID.values())
assert sorted((v, sc) for *_, cells in GRID.values() for v, sc in cells) == \
    sorted((v, sc) for v in range(len(VARIANTS)) for sc in SCOPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_ratio_zero_is_equivalence_for_every_method_in_every_scope(family):
    """The ratio-0 property over a fixed grid (what CI runs whatever hypothesis draws): every method variant in
    every scope, four cells per family on one capture (a new schedule re-derives the variants, not the capture),
    each a generation of its own; a scope the family honours is the scope every reduced site reports."""
    grid, batch, cfg, cells = GRID[family]
    model, kw = zoo.build(family, grid=grid, batch=batch, seed=FAMILIES.index(family))
    kw = _kw(family, _cfg_batch(kw, batch) if cfg else kw)
    failed, reduced = [], None
    with torch.no_grad(), forced_regions():
        ref = _call(model, kw)
        for v, scope in cells:
            method, params = VARIANTS[v]
            schedule = {"method": method, "ratio": 0.0, "scope": scope, "params": {method: params}}
            try:
                if reduced is None:
                    reduced = compile_with_reduction(model, schedule)
                else:
                    reduced.schedule = schedule
                with reduced.generation():          # each cell a generation of its own (DiTo: its prime step)
                    out = _call(reduced, kw)
                _check_forced_run(reduced, out, ref, scope)
                if method != "todo" and family != "qwenimage":
                    assert {r.scope for r in reduced.report() if r.reduced} == {scope}
            except Exception as e:  # noqa: BLE001 — every cell runs; the failures are listed together
                failed.append(f"{method} {params} in {scope}: {type(e).__name__}: {str(e)[:300]}")
    assert not failed, "\n".join(failed)


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_ratio_zero_is_equivalence(data):
    """The same property drawn by hypothesis beyond the grid: lattices up to 6×7 (3×5×5 video), batches 1-3,
    CFG batches, seeds and any (method variant, scope, family) cell."""
    method, params = data.draw(st.sampled_from(VARIANTS))
    family = data.draw(st.sampled_from(FAMILIES))
    grid = _lattice(family, data)
    batch = data.draw(st.integers(1, 3))
    cfg = data.draw(st.booleans())
    seed = data.draw(st.integers(0, 2 ** 16))
    model, kw = zoo.build(family, grid=grid, batch=batch, seed=seed)
    kw = _kw(family, _cfg_batch(kw, batch) if cfg else kw)
    scope = data.draw(st.sampled_from(SCOPES))
    # k = N regions run the method's real selection and the full gather / sdpa / reconstruct path
    with torch.no_grad(), forced_regions():
        ref = _call(model, kw)
        schedule = {"method": method, "ratio": 0.0, "scope": scope, "params": {method: params}}
        reduced = compile_with_reduction(model, schedule)
        out = _call(reduced, kw)
    _check_forced_run(reduced, out, ref, scope)


@pytest.mark.parametrize("method,scope", [("tome", "attention+proj"), ("coredit", "block")])
def test_merge_selections_keep_the_joint_sequence_layout(method, scope):
    """Flux's joint attention concatenates [text | image] inside a wide region and slices it again: a
    selection with merge slots must keep that layout (its RoPE rows and slices), not move the merges first."""
    model, kw = zoo.build("flux", grid=(3, 2), batch=1)
    kw = _kw("flux", kw)
    with torch.no_grad(), forced_regions():
        ref = _call(model, kw)
        out = _call(compile_with_reduction(model, {"method": method, "ratio": 0.0, "scope": scope}), kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _sdpa_shapes(gm, kw):
    ep = torch.export.export(gm, (), kw, strict=False)
    return [(tuple(n.args[0].meta["val"].shape), tuple(n.args[1].meta["val"].shape)) for n in ep.graph.nodes
            if n.op == "call_function" and n.target == aten.scaled_dot_product_attention.default]


@pytest.mark.parametrize("family", ["pixart", "sd35", "flux", "cogvideox", "qwenimage", "handdit"])
def test_ratio_half_runs_attention_on_k_tokens(family):
    model, kw = zoo.build(family)
    kw = _kw(family, kw)
    with torch.no_grad():
        ref = _call(model, kw)
        reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})
        out = _call(reduced, kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)  # it really changed something
    cap = reduced.last_capture
    gm = cap.variants[reduced.last_key]
    dense_shapes = _sdpa_shapes(cap.graph, kw)
    red_shapes = _sdpa_shapes(gm, kw)
    def ops(g):
        return {str(n.target) for n in torch.export.export(g, (), kw, strict=False).graph.nodes}

    added = ops(gm) - ops(cap.graph)
    assert "aten.index_select.default" in added  # reduce / reconstruct are row gathers ...
    banned = ("scatter", "index_put", "nonzero", "masked_select", "sort", "argsort")
    assert not [op for op in added if any(b in op for b in banned)]  # ... and nothing TensorRT cannot lower
    assert len(dense_shapes) == len(red_shapes) == len(cap.sites)
    for site, cfg, (qd, kd), (qr, kr) in zip(cap.sites, reduced.last_key, dense_shapes, red_shapes):
        if cfg is None:
            assert (qd, kd) == (qr, kr)
        else:
            removed = cfg.n - cfg.k
            assert cfg.k == cfg.n - round(0.5 * cfg.n)
            assert qr[-2] == qd[-2] - removed and kr[-2] == kd[-2] - removed


def _attention_flops(fn):
    def flash(q, k, v, *args, **kwargs):
        return sdpa_flop_count(q, k, v)

    custom = {aten._scaled_dot_product_flash_attention_for_cpu: flash}
    with FlopCounterMode(display=False, custom_mapping=custom) as fc:
        fn()
    counts = fc.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if "scaled_dot_product" in str(k))


@pytest.mark.parametrize("family", ["pixart", "sd3", "flux", "wan"])
def test_attention_flops_drop_as_reported(family):
    model, kw = zoo.build(family, grid=(2, 6, 6) if family in zoo.VIDEO else (6, 6))
    kw = _kw(family, kw)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5}, **kw)  # capture outside the counter
    with torch.no_grad():
        dense = _attention_flops(lambda: _call(model, kw))
        red = _attention_flops(lambda: _call(reduced, kw))
    rep_dense, rep_red = reduced.report().totals()
    assert dense == rep_dense
    assert red == rep_red < dense


def test_run_flops_sum_the_variant_of_every_step():
    model, kw = zoo.build("pixart", grid=(6, 6))
    kw = _kw("pixart", kw)
    sched = {"ratio": 0.5, "rules": [{"steps": [0], "method": "none"}, {"steps": {"start": 2}, "ratio": 0.25}]}
    reduced = compile_with_reduction(model, sched, **kw)
    measured = 0
    with torch.no_grad():
        for t in (900.0, 700.0, 500.0, 300.0):
            measured += _attention_flops(lambda: _call(reduced, dict(kw, timestep=torch.full((2,), t))))
    dense, red = reduced.report(num_steps=4).run_flops
    assert red == measured < dense


def test_attention_cross_reduces_the_cross_attention_queries_and_reports_them():
    """PixArt (self- then cross-attention per block): the cross sdpa runs k queries against the whole text, and
    report() names its scope and whose kept tokens it uses. SD3 (joint attention, no cross-attention): the
    scope falls back to attention+proj, the same graph, with the reason."""
    model, kw = zoo.build("pixart", grid=(4, 4))
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": "attention+cross"})
    with torch.no_grad():
        reduced(**dict(kw, return_dict=False))
    gm = reduced.last_capture.variants[reduced.last_key]
    sdpa = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == aten.scaled_dot_product_attention.default]
    text = kw["encoder_hidden_states"].shape[1]
    # two blocks: self-attention on 8 of 16 tokens, cross-attention 8 queries over the whole text
    assert sorted((n.args[0].meta["val"].shape[-2], n.args[1].meta["val"].shape[-2]) for n in sdpa) == \
        sorted([(8, 8), (8, 8), (8, text), (8, text)])
    rows = {r.module.split(" ")[0]: r for r in reduced.report()}
    assert rows["transformer_blocks.0.attn2"].scope == "attention+cross"
    assert "transformer_blocks.0.attn1" in rows["transformer_blocks.0.attn2"].schedule
    # k = N (forced): both regions run the full reduce / sdpa / reconstruct path and give the dense output
    kw = dict(kw, return_dict=False)
    with torch.no_grad(), forced_regions():
        exact = compile_with_reduction(model, {"method": "tome", "ratio": 0.0, "scope": "attention+cross"})
        torch.testing.assert_close(exact(**kw)[0], model(**kw)[0], rtol=1e-5, atol=1e-5)
    assert {r.scope for r in exact.report()} == {"attention+cross"}
    model, kw = zoo.build("sd3")
    kw = dict(kw, return_dict=False)
    cross = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": "attention+cross"})
    proj = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": "attention+proj"})
    with torch.no_grad():
        torch.testing.assert_close(cross(**kw)[0], proj(**kw)[0], rtol=0, atol=0)
    for r in cross.report():
        assert r.scope == "attention+proj" and "has no cross-attention" in r.scope_note


def _linear_rows(gm) -> list[int]:
    """The token count each linear layer of a graph runs on (rows of its input)."""
    lin = (aten.linear.default, aten.addmm.default, aten.mm.default)
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in lin:
            x = n.args[1] if n.target == aten.addmm.default else n.args[0]
            out.append(x.meta["val"].shape[-2])
    return out


@pytest.mark.parametrize("family,prop", [("pixart", False), ("pixart", True), ("sd3", True)])
def test_todo_in_attention_proj_projects_the_pooled_tokens_to_keys_and_values(family, prop):
    """ToDo asked for attention+proj (or wider) pools the tokens the k / v projections read: those two linears
    run on the pooled tokens (the q projection on all), and the output equals pooling the keys / values after
    their projections (the attention scope) — the path is affine and the pooling weights sum to 1. SD3: its
    joint sequence, the text keys whole. A model with a norm on the keys (Flux's norm_k) keeps the attention
    scope, with the op named in report()."""
    grid = (4, 6)
    model, kw = zoo.build(family, grid=grid)
    kw = dict(kw, return_dict=False)
    sched = {"method": "todo", "ratio": 0.75, "scope": "attention+proj", "prop_attn": prop}
    wide, narrow = (compile_with_reduction(model, dict(sched, scope=s)) for s in ("block", "attention"))
    with torch.no_grad():
        out, ref, dense = wide(**kw)[0], narrow(**kw)[0], model(**kw)[0]
    assert (out - dense).abs().max() > 1e-3                      # it really pooled
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    n, k = wide.last_key[0].n, wide.last_key[0].k
    rows = _linear_rows(wide.last_capture.variants[wide.last_key])
    dense_rows = _linear_rows(narrow.last_capture.variants[narrow.last_key])
    sites = sum(c is not None for c in wide.last_key)
    assert k < n and len(rows) == len(dense_rows)
    assert rows.count(k) - dense_rows.count(k) == 2 * sites   # to_k, to_v of each site on the pooled tokens
    assert rows.count(n) == dense_rows.count(n) - 2 * sites    # to_q, to_out and the rest: every token
    for r in (r for r in wide.report() if r.reduced):
        assert r.scope == "attention+proj" and "keys/values only" in r.scope_note
    flux, kw = zoo.build("flux")
    kept = compile_with_reduction(flux, sched)
    with torch.no_grad():
        kept(**dict(kw, return_dict=False))
    notes = [r.scope_note for r in kept.report() if r.reduced]
    assert notes and all("norm_k is not affine" in s for s in notes)


class _ScaledKeysAttention(anydit.MPAttention):
    """Keys scaled by a per-channel parameter: `k / c` (affine in k) or `c / k` (not affine in k)."""

    def __init__(self, dim, heads, keys_divide):
        super().__init__(dim, heads)
        self.keys_divide, self.c = keys_divide, torch.nn.Parameter(torch.linspace(1.0, 2.0, dim // heads))

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = (f(x).view(b, n, self.heads, -1).transpose(1, 2) for f in (self.wq, self.wk, self.wv))
        k = self.c / k if self.keys_divide else k / self.c
        return self.wo(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("keys_divide", [False, True])
def test_todo_kv_plan_takes_a_division_of_the_keys_and_refuses_a_division_by_them(keys_divide):
    """k / c commutes with ToDo's pooling (its weights sum to 1), c / k does not: the first runs to_k / to_v on the
    pooled tokens with the attention scope's output, the second keeps the attention scope with the division named."""
    model, kw = anydit.mpdit(grid=(4, 6))
    for blk in model.blocks:
        blk.attention = _ScaledKeysAttention(32, 4, keys_divide)
    sched = {"method": "todo", "ratio": 0.75, "scope": "attention+proj"}
    wide, narrow = (compile_with_reduction(model, dict(sched, scope=s)) for s in ("attention+proj", "attention"))
    with torch.no_grad():
        out, ref = wide(**kw), narrow(**kw)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    n, k = wide.last_key[0].n, wide.last_key[0].k
    assert _linear_rows(wide.last_capture.variants[wide.last_key]).count(k) == (0 if keys_divide else 4)
    notes = [r.scope_note for r in wide.report() if r.reduced]
    assert len(notes) == 2
    for note in notes:
        assert ("divides by the keys / values" in note) if keys_divide else note is None
