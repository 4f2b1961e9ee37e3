"""DiTs written the way research code writes them: the latent, timestep and lattice are found by structure,
research attention spellings become one sdpa with the same numbers, extra tokens are kept, and every
failure is a named error."""
import re
import warnings

import pytest
import torch
from torch import nn

import anydit
from ditreduce import ScheduleError, UnsupportedModelError, compile_with_reduction
from ditreduce.passes.capture import capture
from ditreduce.passes.inputs import find_timestep, lattice_for_tokens, lattice_from_ids, lattice_signature
from ditreduce.passes.match_attention import SDPA, match_attention

# family -> (kind, grid, text tokens, other tokens) of every reduced site
EXPECTED = {
    "origdit": ("self", (4, 4), 0, 0),
    "xtransdit": ("joint", (4, 4), 5, 0),
    "regvit": ("self", (4, 4), 0, 4),     # class token before, 3 registers after
    "packeddit": ("self", (2, 3, 4), 0, 0),
}


def _ratio(family, ratio, **build):
    model, kw = anydit.HAND[family](**build)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": ratio})
    with torch.no_grad():
        ref, out = model(**kw), reduced(**kw)
    return reduced, ref, out


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_ratio_zero_is_the_dense_output_and_the_layout_is_found(family):
    reduced, ref, out = _ratio(family, 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    kind, grid, text, other = EXPECTED[family]
    rep = reduced.report()
    assert len(rep) == 2 and all(r.reduced for r in rep)
    assert {(r.kind, r.grid, r.text_tokens) for r in rep} == {(kind, grid, text)}
    for site in reduced.last_capture.sites:
        extra = sum(s.length for s in site.layout.segments if s.kind == "other")
        assert extra == other and site.image_tokens == torch.Size(grid).numel()


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_ratio_half_keeps_shapes_and_changes_the_output(family):
    reduced, ref, out = _ratio(family, 0.5)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.allclose(out, ref)
    d, r = reduced.report().totals()
    assert r < d


def test_latent_is_found_whatever_its_name():
    _, kw = anydit.origdit()
    reduced, _, _ = _ratio("origdit", 0.0)
    assert any(n.startswith("latent x ") for n in reduced.last_capture.notes)
    assert list(kw) == ["x", "t", "y"]


def test_channels_last_latent_is_read_by_structure():
    class ChannelsLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = anydit.OrigDiT()

        def forward(self, img, t, y):  # [B, H, W, C] in, [B, H, W, C] out
            return self.inner(img.permute(0, 3, 1, 2), t, y).permute(0, 2, 3, 1)

    torch.manual_seed(0)
    model = ChannelsLast().eval()
    kw = dict(img=torch.randn(2, 8, 6, 4), t=torch.tensor([5, 5]), y=torch.tensor([1, 2]))
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
    with torch.no_grad():
        torch.testing.assert_close(r(**kw), model(**kw), rtol=1e-5, atol=1e-5)
    assert {x.grid for x in r.report()} == {(4, 3)}


def test_timestep_by_name_or_structure_and_none_when_it_is_an_embedding():
    b = 2
    assert find_timestep({"x": torch.zeros(b, 4, 8, 8), "t": torch.tensor([3, 3])})[0] == "t"
    assert find_timestep({"tokens": torch.zeros(b, 8, 4), "sigma": torch.rand(b)})[0] == "sigma"
    assert find_timestep({"x": torch.zeros(b, 4, 8, 8), "noise": torch.rand(b)})[0] == "noise"  # the only 1-d float
    assert find_timestep({"pixels": torch.zeros(b, 3, 8, 8), "cond": torch.zeros(b, 32)}) is None


def test_schedule_without_step_rules_needs_no_timestep_and_step_rules_name_set_step():
    model, kw = anydit.regvit()  # its time input `cond` is already an embedding
    plain = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})
    with torch.no_grad():
        plain(**kw)
        plain(**kw)
    stepped = compile_with_reduction(model, {"ratio": 0.5, "rules": [{"steps": [0], "method": "none"}]})
    with pytest.raises(ScheduleError, match=r"set_step\(i, num_steps\)"), torch.no_grad():
        stepped(**kw)
    stepped.set_step(0, 10)
    with torch.no_grad():
        dense = stepped(**kw)
    torch.testing.assert_close(dense, model(**kw), rtol=0, atol=0)  # step 0 is dense


def test_steps_are_counted_from_sigma():
    model, kw = anydit.packeddit()
    r = compile_with_reduction(model, {"ratio": 0.5, "rules": [{"steps": [0], "method": "none"}]})
    keys = []
    with torch.no_grad():
        for s in (0.9, 0.5):
            r(**dict(kw, sigma=torch.full((2,), s)))
            keys.append(r.last_key)
    assert all(c is None for c in keys[0]) and all(c is not None for c in keys[1])


def test_lattice_from_integer_arguments_and_ids_of_any_name():
    assert lattice_for_tokens({"num_frames": 2, "height": 3, "width": 4}, 24)[0] == (2, 3, 4)
    assert lattice_for_tokens({"num_frames": 1, "height": 3, "width": 5}, 15)[0] == (3, 5)
    assert lattice_for_tokens({"size": (5, 3), "steps": 10}, 15)[0] == (5, 3)
    assert lattice_for_tokens({"height": 3, "width": 5}, 16) is None
    h, w = 3, 5
    ids = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    assert lattice_for_tokens({"coords": ids.float()}, 15)[0] == (3, 5)
    assert lattice_from_ids(ids.t()[None]) == (3, 5)                    # [B, c, N]
    assert lattice_from_ids(ids[torch.randperm(15)]) is None              # not row-major
    assert lattice_from_ids(torch.cat([torch.zeros(15, 1), ids, torch.zeros(15, 1)], 1)) == (3, 5)  # Flux2: t,h,w,l


def test_odd_packed_lattice_from_integer_arguments():
    reduced, ref, out = _ratio("packeddit", 0.0, grid=(3, 5, 3))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert {r.grid for r in reduced.report()} == {(3, 5, 3)}


def test_packed_tokens_without_a_stated_lattice_are_named_and_the_override_fixes_it():
    model, kw = anydit.packeddit()

    class NoSizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, tokens, sigma):
            return self.m(tokens, sigma, 2, 3, 4)

    wrapped = NoSizes().eval()
    args = dict(tokens=kw["tokens"], sigma=kw["sigma"])
    with pytest.warns(UserWarning, match="layout unknown"), pytest.raises(ScheduleError, match="no lattice stated"):
        compile_with_reduction(wrapped, "uniform-50")(**args)
    fixed = compile_with_reduction(wrapped, {"ratio": 0.5, "layout": {"grid": [2, 3, 4]}})
    with torch.no_grad():
        fixed(**args)
    assert {r.grid for r in fixed.report()} == {(2, 3, 4)}


# --- attention spellings -----------------------------------------------------------------------------
class XAttend(nn.Module):
    def forward(self, q, k, v, keep):
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * q.shape[-1] ** -0.5
        sim = sim.masked_fill(~keep[:, None, None, :], -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1, dtype=torch.float32).type(q.dtype)
        return torch.einsum("b h i j, b h j d -> b h i d", nn.functional.dropout(attn, 0.1, training=False), v)


class EqZeroMask(nn.Module):
    """mask == 0 filled with -inf, scale after the fill, upcast scores."""

    def forward(self, q, k, v, keep):
        s = (q @ k.transpose(-1, -2)).float()
        s = s.masked_fill(keep[:, None, None, :] == 0, float("-inf")) / 3.0
        return torch.softmax(s, -1).to(q.dtype) @ v


class Baddbmm(nn.Module):
    def forward(self, q, k, v, keep):
        b, h, n, d = q.shape
        q3, k3, v3 = (t.reshape(b * h, n, d) for t in (q, k, v))
        s = torch.baddbmm(torch.empty(b * h, n, n, dtype=q.dtype), q3, k3.transpose(-1, -2), beta=0, alpha=d ** -0.5)
        return torch.bmm(s.softmax(-1), v3).reshape(b, h, n, d)


class ScaledK(nn.Module):
    def forward(self, q, k, v, keep):
        return (q @ (k * 0.5).transpose(-2, -1)).softmax(-1) @ v


@pytest.mark.parametrize("module", [XAttend(), EqZeroMask(), Baddbmm(), ScaledK()], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_research_spellings_become_one_sdpa_with_the_same_numbers(module, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g).to(dtype) for _ in range(3))
    keep = torch.ones(2, 7, dtype=torch.bool)
    keep[0, 4:] = False
    kw = dict(q=q, k=k, v=v, keep=keep)
    gm = capture(module, kw)
    res = match_attention(gm)
    assert res.canonicalised == 1 and len(res.sites) == 1
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(SDPA) == 1 and not any("softmax" in str(o) for o in ops)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(gm(**kw), module(**kw), rtol=tol, atol=tol)


def test_diffusers_baddbmm_processor_is_canonicalised():
    import zoo
    from diffusers.models.attention_processor import AttnProcessor

    model, kw = zoo.pixart()
    model.set_attn_processor(AttnProcessor())  # get_attention_scores: baddbmm + softmax + bmm
    kw = dict(kw, return_dict=False)
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
    with torch.no_grad():
        torch.testing.assert_close(r(**kw)[0], model(**kw)[0], rtol=1e-5, atol=1e-5)
    assert [(x.kind, x.grid) for x in r.report()] == [("self", (4, 4)), ("cross", (4, 4))] * 2
    assert all(s.origin == "matmul-softmax" for s in r.last_capture.sites)


# --- named errors ------------------------------------------------------------------------------------
class DataDependent(nn.Module):
    """Attention over the valid tokens of the sample only (Mochi): a data-dependent sequence length."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(4, 16, 2, 2)

    def forward(self, x, t, mask):
        tok = self.proj(x).flatten(2).transpose(1, 2)
        valid = tok[0, mask[0]][None, None]
        out = nn.functional.scaled_dot_product_attention(valid, valid, valid)
        return out.sum() + tok.sum()


# the named error each model raises, exactly that class: a capture export refuses (data-dependent control
# flow) is an UnsupportedModelError; a graph that captures but sizes attention by data is a ScheduleError
REFUSALS = {"DataDependent": (UnsupportedModelError, "DataDependent cannot be captured with torch.export")}


def _raises_exactly(model_name):
    err, says = REFUSALS[model_name]
    return pytest.raises(err, match=says, check=lambda e: type(e) is err)


def test_data_dependent_attention_is_a_named_error_not_a_torch_exception():
    x, mask = torch.randn(1, 4, 8, 8), torch.ones(1, 16, dtype=torch.bool)
    r = compile_with_reduction(DataDependent().eval(), "uniform-50")
    with _raises_exactly("DataDependent"):
        r(x=x, t=torch.tensor([1.0]), mask=mask)


def test_mochi_reduces_its_image_tokens_next_to_the_valid_text_of_each_sample():
    """Mochi attends per sample over [image | text[nonzero(mask)]]: the text length is read at run time."""
    import zoo_more

    model, kw = zoo_more.mochi()
    kw = dict(kw, return_dict=False)
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})
    with torch.no_grad():
        ref, out = model(**kw)[0], r(**kw)[0]
    assert torch.isfinite(out).all() and not torch.allclose(out, ref, atol=1e-4)
    rows = [row for row in r.report() if row.reduced]
    assert {(row.module, row.kind, row.text_tokens, row.scope) for row in rows} == {
        ("transformer_blocks.0.attn1", "joint", -1, "attention")}


def test_a_conditioning_tensor_of_id_like_shape_does_not_trigger_a_capture_per_call():
    model, kw = anydit.regvit(batch=3)  # cond [3, 32]: shaped like [c, N] ids, but not integer-valued
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})
    with torch.no_grad():
        for seed in range(3):
            r(**dict(kw, cond=torch.randn(3, 32, generator=torch.Generator().manual_seed(seed))))
    assert len(r.captures) == 1


def test_a_matcher_failure_is_reported_not_raised(monkeypatch):
    import ditreduce.passes.match_attention as ma

    def broken(node):
        raise RuntimeError("boom")

    monkeypatch.setattr(ma, "_match_manual", broken)
    model, kw = anydit.origdit()
    gm = capture(model, kw)
    res = match_attention(gm, model)
    assert res.sites == [] and any("attention matching failed here (RuntimeError: boom)" in why
                                   for why in res.unmatched_modules.values())
    torch.testing.assert_close(gm(**kw), model(**kw))  # the graph is left as it was: dense


def test_features_are_never_read_as_position_ids():
    """A short caption [B, 4, C] of zeros is integer-valued and has 4 rows, like ids; read as ids, its
    content became part of the capture signature, so a warm-up with zeros and the real call captured
    twice (found by `ditreduce demo`). Position ids still are."""
    caps = torch.zeros(8, 4, 64)
    assert lattice_signature({"encoder_hidden_states": caps, "hidden_states": torch.zeros(8, 3, 4)}) == ()
    ids = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij"), -1).reshape(-1, 2)
    assert lattice_signature({"img_ids": ids}) == (("img_ids", (4, 6)),)


# --- research patterns, second pass (issue 19) -------------------------------------------------------
# pattern -> (builder, kwargs, the widest scope its structure allows)
PATTERNS = {
    "rope-module-called-in-blocks": (anydit.ropedit, {}, "block"),
    "gqa-repeat": (anydit.gqadit, {}, "block"),
    "gqa-repeat-n_rep-1": (anydit.gqadit, dict(kv_heads=4), "block"),
    "gqa-repeat_interleave": (anydit.gqadit, dict(repeat="repeat_interleave"), "block"),
    "model-parallel-linears": (anydit.mpdit, {}, "block"),
    "projection-only-attention-modules": (anydit.projonly, {}, "block"),
    "mix-ffn-conv-in-block": (anydit.mixffndit, {}, "attention+proj"),
    "modulelist-layers-residuals-in-parent": (anydit.listdit, {}, "block"),
}
SCOPES = ("attention", "attention+proj", "block")
INTERNAL_NAME = re.compile(r"\b(getitem|linear|view|reshape|add|mul|split_with_sizes|sdpa|repeat|convolution|"
                           r"scaled_dot_product_attention|cat|transpose|permute)_\d+\b")


def _compiled(pattern, scope, ratio=0.0):
    build, kwargs, _ = PATTERNS[pattern]
    model, kw = build(**kwargs)
    return model, kw, compile_with_reduction(model, {"method": "uniform", "ratio": ratio, "scope": scope})


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_research_pattern_gets_the_widest_scope_its_structure_allows(pattern, scope):
    model, kw, r = _compiled(pattern, scope)
    with torch.no_grad():
        torch.testing.assert_close(r(**kw), model(**kw), rtol=1e-5, atol=1e-5)  # ratio 0: exact in every scope
    rep = r.report()
    sites = [row for row in rep if row.kind != "unmatched"]
    assert len(sites) == 2 and all(row.reduced and row.skip_reason is None for row in sites)
    widest = PATTERNS[pattern][2]
    got = scope if SCOPES.index(scope) <= SCOPES.index(widest) else widest  # refused: the widest scope that works
    assert [row.scope for row in sites] == [got, got], [row.scope_note for row in sites]
    for row in sites:
        if got == scope:
            assert row.scope_note is None
        else:  # refused: the note names the module, the source line and the scope that works
            assert re.search(r"blocks\.\d\.mlp", row.scope_note) and "anydit.py:" in row.scope_note
            assert f"scope `{widest}`" in row.scope_note and not INTERNAL_NAME.search(row.scope_note)
    # no false "unmatched" rows: only the real ReLU linear attention of the MMDiT-style model is one
    assert [row.module for row in rep if row.kind == "unmatched"] == (
        ["refiner"] if pattern == "projection-only-attention-modules" else [])


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_research_pattern_reduces_at_half_in_its_widest_scope(pattern):
    model, kw, r = _compiled(pattern, PATTERNS[pattern][2], ratio=0.5)
    with torch.no_grad():
        ref, out = model(**kw), r(**kw)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.allclose(out, ref)
    assert {row.scope for row in r.report() if row.kind != "unmatched"} == {PATTERNS[pattern][2]}


def test_projection_only_attention_modules_are_owners_of_the_parent_site():
    model, kw = anydit.projonly()
    res = match_attention(capture(model, kw), model)
    assert [(s.module, s.owners) for s in res.sites] == [
        (f"transformer_blocks.{i}", (f"transformer_blocks.{i}.attn", f"transformer_blocks.{i}.attn_context"))
        for i in range(2)]
    assert set(res.unmatched_modules) == {"refiner"}  # ReLU linear attention: really no softmax attention
    assert "no softmax attention" in res.unmatched_modules["refiner"]


def test_scope_refusals_name_the_module_the_source_line_and_what_works():
    model, kw = anydit.xtransdit()  # boolean key-padding mask over [text | image]; residuals in the parent loop
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": "attention+proj"})
    with torch.no_grad():
        r(**kw)
    for site in r.last_capture.sites:
        for scope, why in site.scopes.items():
            assert isinstance(why, str), scope
            assert not INTERNAL_NAME.search(why), why
            assert re.search(r"layers\.\d", why) and "anydit.py:" in why and "the site can use scope `attention`" in why
    assert "attention mask over the image tokens" in r.last_capture.sites[0].scopes["attention+proj"]


def test_every_op_propagation_reads_is_in_the_token_wise_table():
    from ditreduce.passes import propagate, scope

    missing = [str(op) for op in propagate.RULES if op not in scope.TOKENWISE]
    assert missing == []


def test_capture_and_rewrite_show_no_warning_about_torch_internals():
    model, kw = anydit.ropedit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # LeafSpec's FutureWarning came from torch.export and the graph copy
        r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5, "scope": "block"})
        with torch.no_grad():
            r(**kw)


def test_the_library_filter_leaves_other_warnings_alone():
    from ditreduce.passes.capture import quiet_export_warnings

    with pytest.warns(FutureWarning, match="the model's own"), quiet_export_warnings():
        warnings.warn("the model's own FutureWarning", FutureWarning)


def test_per_sample_valid_image_tokens_are_a_named_error_that_says_where_and_what_works():
    """A loop over the batch attending to [text | the valid image tokens of the sample]: the image token count
    is data-dependent (per-sample text of run-time length is reduced: tests/test_variable_text.py). The error
    names the op that made the length dynamic, its source line and module, and the fix (pad with a mask)."""
    model, kw = anydit.persampletext(cls=anydit.PerSampleValidImageDiT)
    kw = dict(kw, image_mask=torch.ones(2, 16, dtype=torch.bool))
    del kw["context_mask"]
    with pytest.raises(ScheduleError) as e, torch.no_grad():
        compile_with_reduction(model, "uniform-50")(**kw)
    msg = str(e.value)
    assert "blocks.0: data-dependent shape" in msg and "set by aten.index `seq = torch.cat([ctx[i:i + 1], img[i][image_mask[i]]" in msg
    assert "anydit.py:" in msg and "pass the padding as an attention mask" in msg and "# text" not in msg


class _TokenRepeatMLP(nn.Module):
    """Tiles the tokens and keeps the second copy: the values are unchanged, but the op repeats tokens."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        n = x.shape[1]
        return self.fc(x).repeat(1, 2, 1)[:, n:]


class _TokenGramMLP(nn.Module):
    """A token-mixing einsum: every token reads the Gram matrix of all tokens."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        g = torch.einsum("bnc,bnd->bcd", x, x) / x.shape[1]
        return self.fc(torch.einsum("bnc,bcd->bnd", x, g))


@pytest.mark.parametrize("mlp,why", [(_TokenRepeatMLP, "repeats along the token dimension"),
                                     (_TokenGramMLP, "sums over the token dimension")])
def test_conditionally_token_wise_ops_refuse_block_when_they_act_along_the_tokens(mlp, why):
    torch.manual_seed(0)
    model = anydit.RopeDiT()
    for blk in model.blocks:
        blk.mlp = mlp(32)
    model, kw = anydit._latent_t(model, (4, 4), 2, 0)
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0, "scope": "block"})
    with torch.no_grad():
        torch.testing.assert_close(r(**kw), model(**kw), rtol=1e-5, atol=1e-5)
    rows = r.report()
    assert [row.scope for row in rows] == ["attention+proj", "attention+proj"]   # block refused: the next scope
    assert all(why in row.scope_note and re.search(r"blocks\.\d\.mlp", row.scope_note)
               and "test_any_dit.py:" in row.scope_note for row in rows), [row.scope_note for row in rows]
