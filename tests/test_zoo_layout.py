"""For every model family in the zoo, the passes find the expected sites with the right kind and lattice."""
import pytest
import torch

import zoo
from ditreduce import ScheduleError, UnsupportedModelError, compile_with_reduction
from ditreduce.errors import LayoutError

# family -> list of (module, kind, grid, text tokens, reduced)
EXPECTED = {
    "dit": [("transformer_blocks.0.attn1", "self", (4, 4), 0, True), ("transformer_blocks.1.attn1", "self", (4, 4), 0, True)],
    "pixart": [("transformer_blocks.0.attn1", "self", (4, 4), 0, True), ("transformer_blocks.0.attn2", "cross", (4, 4), 0, False),
               ("transformer_blocks.1.attn1", "self", (4, 4), 0, True), ("transformer_blocks.1.attn2", "cross", (4, 4), 0, False)],
    "sd3": [("transformer_blocks.0.attn", "joint", (4, 4), 6, True), ("transformer_blocks.1.attn", "joint", (4, 4), 6, True)],
    "sd35": [("transformer_blocks.0.attn", "joint", (4, 4), 6, True), ("transformer_blocks.0.attn2", "self", (4, 4), 0, True),
             ("transformer_blocks.1.attn", "joint", (4, 4), 6, True)],
    "flux": [("transformer_blocks.0.attn", "joint", (4, 4), 6, True),
             ("single_transformer_blocks.0.attn", "joint", (4, 4), 6, True)],
    "hunyuan": [("time_extra_emb.pooler", "cross", None, 0, False),
                ("blocks.0.attn1", "self", (4, 4), 0, True), ("blocks.0.attn2", "cross", (4, 4), 0, False),
                ("blocks.1.attn1", "self", (4, 4), 0, True), ("blocks.1.attn2", "cross", (4, 4), 0, False)],
    "cogvideox": [("transformer_blocks.0.attn1", "joint", (2, 4, 4), 6, True),
                  ("transformer_blocks.1.attn1", "joint", (2, 4, 4), 6, True)],
    "wan": [("blocks.0.attn1", "self", (2, 4, 4), 0, True), ("blocks.0.attn2", "cross", (2, 4, 4), 0, False),
            ("blocks.1.attn1", "self", (2, 4, 4), 0, True), ("blocks.1.attn2", "cross", (2, 4, 4), 0, False)],
    "qwenimage": [("transformer_blocks.0.attn", "joint", (4, 4), 7, True), ("transformer_blocks.1.attn", "joint", (4, 4), 7, True)],
    "handdit": [("blocks.0.attn", "self", (4, 4), 0, True), ("blocks.1.attn", "self", (4, 4), 0, True)],
}


def _report(family, grid=None):
    model, kw = zoo.build(family, grid=grid)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})
    reduced.capture(**kw)
    return reduced.report()


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_sites_kinds_and_lattices(family):
    rep = _report(family)
    got = [(r.module, r.kind, r.grid, r.text_tokens, r.reduced) for r in rep]
    assert got == EXPECTED[family]
    text = str(rep)
    assert all(r.module in text for r in rep)


def test_text_order_in_joint_sequences():
    """SD3 puts image first, Flux / QwenImage / CogVideoX put text first."""
    for family, first in [("sd3", "image"), ("flux", "text"), ("qwenimage", "text"), ("cogvideox", "text")]:
        model, kw = zoo.build(family)
        r = compile_with_reduction(model, "uniform-50")
        cap = r.capture(**kw)
        joint = [s for s in cap.sites if s.kind == "joint"]
        assert joint and all(s.layout.segments[0].kind == first for s in joint), family


@pytest.mark.parametrize("family,grid", [("pixart", (5, 9)), ("sd3", (3, 7)), ("flux", (3, 7)), ("qwenimage", (5, 3)),
                                         ("handdit", (5, 9)), ("wan", (3, 2, 5))])  # DiT itself only unpatchifies square inputs
def test_non_square_and_odd_lattices(family, grid):
    rep = _report(family, grid)
    reduced = [r for r in rep if r.reduced]
    assert reduced and all(r.grid == grid for r in reduced)


def test_sana_linear_attention_is_reported_unmatched_and_nothing_reducible_is_an_error():
    model, kw = zoo.sana()
    r = compile_with_reduction(model, "uniform-50")
    with pytest.raises(ScheduleError) as e:
        r(**kw)
    assert "reduces no attention site" in str(e.value)
    assert "attn2" in str(e.value) and "cross" in str(e.value)
    assert "attn1" in str(e.value) and "linear attention" in str(e.value)


def test_lumina2_fails_with_a_clear_export_error():
    model, kw = zoo.lumina2()
    r = compile_with_reduction(model, "uniform-50")
    with pytest.raises(UnsupportedModelError, match=r"Lumina2Transformer2DModel cannot be captured with torch.export"):
        r(**kw)


def test_packed_tokens_without_lattice_hint_warn_and_override_fixes_it():
    model, kw = zoo.flux(grid=(4, 4))
    ids = kw["img_ids"].clone()
    kw["img_ids"] = ids[torch.randperm(16, generator=torch.Generator().manual_seed(0))]  # not row-major
    r = compile_with_reduction(model, "uniform-50")
    with pytest.warns(UserWarning, match="layout unknown"), pytest.raises(ScheduleError, match="reduces no attention site"):
        r(**kw)
    fixed = compile_with_reduction(model, {"ratio": 0.5, "layout": {"grid": [4, 4], "text_tokens": 6,
                                                                     "text_position": "before"}})
    fixed.capture(**kw)
    assert [rec.grid for rec in fixed.report()] == [(4, 4), (4, 4)]
    bad = compile_with_reduction(model, {"ratio": 0.5, "layout": {"grid": [5, 4]}})
    with pytest.raises(LayoutError, match="does not fit site"):
        bad.capture(**kw)


class _ShuffledDiT(zoo.HandDiT):
    """Tokens go through a gather the layout analysis does not model: the lattice is lost there."""

    def forward(self, hidden_states, timestep):
        b, c, hh, ww = hidden_states.shape
        p = self.p
        h, w = hh // p, ww // p
        x = hidden_states.view(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        x = self.embed(x)[:, torch.arange(h * w).flip(0)]
        t = self.t_embed(timestep.float().view(b, 1) / 1000)
        for blk in self.blocks:
            x = blk(x, t)
        return (x,)


def test_unknown_op_is_named_in_skip_reason_and_override_reduces_it():
    torch.manual_seed(0)
    model = _ShuffledDiT().eval()
    kw = dict(hidden_states=torch.randn(2, 4, 8, 8), timestep=torch.tensor([10, 10]))
    r = compile_with_reduction(model, "uniform-50")
    with pytest.warns(UserWarning, match=r"lost at aten\.index\.Tensor"), pytest.raises(ScheduleError) as e:
        r(**kw)
    assert "lost at aten.index.Tensor" in str(e.value)
    fixed = compile_with_reduction(model, {"ratio": 0.5, "layout": {"grid": [4, 4]}})
    with torch.no_grad():
        out = fixed(**kw)[0]
    assert out.shape == (2, 16, 32) and [x.grid for x in fixed.report()] == [(4, 4), (4, 4)]
