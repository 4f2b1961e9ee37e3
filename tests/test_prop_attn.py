"""Proportional attention (`prop_attn`): token sizes and the log-size bias against plain-loop references,
and the property it exists for — on a joint-attention model whose image tokens are all alike, attention over
k kept copies with the bias equals attention over all N (exact for every method and ratio); without it the
text tokens' share of the softmax grows and the output moves."""
import math

import pytest
import torch

import zoo
from ditreduce import compile_with_reduction, load_schedule
from ditreduce.methods.coredit import coredit_select
from ditreduce.methods.random import random_selection
from ditreduce.methods.todo import todo_selection
from ditreduce.methods.tome import tome_kept, tome_select
from ditreduce.regions import (Selection, attention_region, embed_in_sequence, reconstruct_tokens, reduce_tokens,
                               token_sizes, with_size_bias)
from ditreduce.schedules.lower import step_key

LATTICE = (6, 6)
N = 36


def _brute_sizes(sel: Selection, reduce_q: bool) -> torch.Tensor:
    """Sizes by plain loops: column sums of the reconstruction, or merge members over their cover."""
    k = sel.kept.shape[1]
    bs = max(t.shape[0] for t in sel if t is not None)
    out = torch.zeros(bs, k)
    for b in range(bs):
        if reduce_q:
            src = sel.src[min(b, sel.src.shape[0] - 1)]
            for i in range(src.shape[0]):
                for m in range(src.shape[1]):
                    out[b, src[i, m]] += 1.0 if sel.w is None else float(sel.w[min(b, sel.w.shape[0] - 1), i, m])
            continue
        out[b] = 1.0
        if sel.msrc is None:
            continue
        msrc, mw = sel.msrc[min(b, sel.msrc.shape[0] - 1)], sel.mw[min(b, sel.mw.shape[0] - 1)]
        cover = {}
        for c in range(msrc.shape[0]):
            for r in range(msrc.shape[1]):
                if mw[c, r] > 0:
                    cover[int(msrc[c, r])] = cover.get(int(msrc[c, r]), 0) + 1
        for c in range(msrc.shape[0]):
            out[b, c] = sum(1.0 / cover[int(msrc[c, r])] for r in range(msrc.shape[1]) if mw[c, r] > 0)
    return out


def _selections():
    x = torch.randn(2, N, 8, generator=torch.Generator().manual_seed(0))
    yield "coredit slots 3", coredit_select(x, LATTICE, 18, slots=3), True
    yield "coredit slots 1", coredit_select(x, LATTICE, 18, slots=1), True
    yield "tome", tome_select(x, LATTICE, tome_kept(N, 18, LATTICE)), True
    yield "tome, every source merged", tome_select(x, LATTICE, tome_kept(N, 9, LATTICE)), True
    yield "random", random_selection(LATTICE, 20, 0), True
    yield "todo avg, overlapping bins", todo_selection(LATTICE, 16, "avg"), False  # 4×4 cells over 6×6
    yield "todo avg 2x2", todo_selection(LATTICE, 9, "avg"), False


@pytest.mark.parametrize("name,sel,reduce_q", list(_selections()), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("start", [0, 5])
@pytest.mark.parametrize("merges_first", [True, False])
def test_token_sizes_match_a_loop_reference(name, sel, reduce_q, start, merges_first):
    """Counted (CoReDiT, random, ToDo) or carried by the selection (ToMe: sel.sizes, from its merge), in both
    kept orders of a joint sequence."""
    assert (sel.sizes is not None) == name.startswith("tome")
    sel = embed_in_sequence(sel, start, start + N + 3, merges_first)  # text before and after the image segment
    sizes = token_sizes(sel, reduce_q)
    torch.testing.assert_close(sizes, _brute_sizes(sel, reduce_q))
    torch.testing.assert_close(sizes.sum(-1), torch.full((sizes.shape[0],), float(N + 3 + start)))


def _loop_attention(q, k, v, bias):
    """softmax(q·k·scale + bias_j) v, one query at a time."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                logits = [float(q[b, h, i] @ k[b, h, j]) / math.sqrt(q.shape[-1]) + bias[min(b, len(bias) - 1)][j]
                          for j in range(k.shape[2])]
                p = torch.softmax(torch.tensor(logits), 0)
                out[b, h, i] = (p[:, None] * v[b, h]).sum(0)
    return out


@pytest.mark.parametrize("name,sel,reduce_q", list(_selections())[:3], ids=lambda v: v if isinstance(v, str) else "")
def test_region_bias_matches_a_loop_reference(name, sel, reduce_q):
    g = torch.Generator().manual_seed(1)
    text = 4
    sel = embed_in_sequence(sel, text, text + N)
    q, k, v = (torch.randn(2, 2, text + N, 8, generator=g) for _ in range(3))
    sizes = _brute_sizes(sel, reduce_q)
    bias = [[math.log(s) for s in row.tolist()] for row in sizes]
    ref = _loop_attention(*(reduce_tokens(t, sel) for t in (q, k, v)), bias)
    ref = reconstruct_tokens(ref.transpose(1, 2), sel, 1).transpose(1, 2)
    out = attention_region(q, k, v, None, *sel, prop_attn=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # a boolean mask (drop the last text token as a key) is kept under the bias
    keep = torch.ones(text + N, dtype=torch.bool)
    keep[text - 1] = False
    mask = with_size_bias(keep[sel.kept[0]], sel, q)
    dropped = sel.kept[0] == text - 1
    assert torch.isinf(mask[..., dropped]).all() and torch.isfinite(mask[..., ~dropped]).all()
    torch.testing.assert_close(mask[..., ~dropped], with_size_bias(None, sel, q)[..., ~dropped])


# --- the property on a joint-attention (MMDiT) model ----------------------------------------------
@pytest.fixture(scope="module")
def joint_model():
    """SD3-like tiny MMDiT (text and image tokens share every softmax), position embedding zeroed and a
    spatially constant latent: every image token of a sample is the same vector in every block."""
    model, kw = zoo.sd3(grid=(4, 6), text=5)
    model.pos_embed.pos_embed.zero_()
    x = kw["hidden_states"]
    kw = dict(kw, hidden_states=x[:, :, :1, :1].expand_as(x).contiguous(), return_dict=False)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5}, **kw)
    return model, kw, reduced


def _steps(model, kw, reduced, schedule, steps=3):
    """Dense and reduced outputs of a short generation (DiTo needs its prime / match / reduce steps); the
    capture is shared: only the schedule (hence the variant) changes."""
    reduced.schedule = load_schedule(schedule)
    outs = []
    with torch.no_grad(), reduced.generation(num_steps=steps):
        for t in (900.0, 600.0, 300.0)[:steps]:
            step_kw = dict(kw, timestep=torch.full_like(kw["timestep"], t))
            outs.append((model(**step_kw)[0], reduced(**step_kw)[0]))
    return outs


METHODS = ["coredit", "tome", "dito", "todo", "random", "uniform"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_identical_image_tokens_prop_attn_reproduces_dense(joint_model, method, ratio):
    sched = {"method": method, "ratio": ratio, "scope": "attention"}
    steps = 3 if method == "dito" else 1  # dito: prime (dense), match, reduce
    for dense, red in _steps(*joint_model, {**sched, "prop_attn": True}, steps):
        torch.testing.assert_close(red, dense, rtol=1e-5, atol=1e-5)
    dense, red = _steps(*joint_model, sched, steps)[-1]
    assert (red - dense).abs().max() > 1e-3


@pytest.mark.parametrize("scope", ["attention+proj", "block"])
@pytest.mark.parametrize("method", ["coredit", "tome", "uniform"])
def test_wider_scopes_carry_the_bias(joint_model, scope, method):
    sched = {"method": method, "ratio": 0.5, "scope": scope}
    model, kw, reduced = joint_model
    for dense, red in _steps(*joint_model, {**sched, "prop_attn": True}, steps=1):
        torch.testing.assert_close(red, dense, rtol=1e-5, atol=1e-5)
    assert {rec.scope for rec in reduced.report() if rec.reduced} == {scope}
    dense, red = _steps(*joint_model, sched, steps=1)[0]
    assert (red - dense).abs().max() > 1e-3


def test_prop_attn_is_a_schedule_field_rules_override(joint_model):
    sched = load_schedule({"method": "tome", "prop_attn": True, "rules": [{"blocks": [0], "prop_attn": False}]})
    assert sched.prop_attn and sched.rules[0].prop_attn is False
    assert load_schedule({"method": "tome"}).prop_attn is False
    sites = joint_model[2].capture(**joint_model[1]).sites
    per_block = {s.block: c.prop_attn for s, c in zip(sites, step_key(sched, sites, 0, 1)) if c is not None}
    assert per_block == {0: False, 1: True}


def test_the_bias_lowers_without_banned_ops():
    """At 4096 tokens the one-hot runs in chunks; the re-export holds no scatter_add / index_put / nonzero."""
    from ditreduce.methods.uniform import uniform_selection

    sel = uniform_selection((64, 64), 2048)

    class Bias(torch.nn.Module):
        def forward(self, q, kept, src):
            return with_size_bias(None, Selection(kept, src), q)

    q = torch.randn(2, 2, 2048, 8)
    ep = torch.export.export(Bias(), (q, sel.kept, sel.src), strict=False)
    ops = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    banned = ("scatter", "index_put", "nonzero", "masked_select", "sort")
    assert not [op for op in ops if any(b in op for b in banned)]
    assert sum("bmm" in op for op in ops) == 2  # 4096 × 2048 one-hot > ONE_HOT_ELEMENTS: two chunks
    torch.testing.assert_close(ep.module()(q, sel.kept, sel.src), Bias()(q, sel.kept, sel.src))
