"""Per-sample variable text: a loop over the batch where each sample attends to its unpadded text, whose
length is read from the mask at run time (`ctx[i][mask[i]]`, an unbacked size for torch.export). The image
tokens are reduced with a static k while the text length stays a run-time size, in eager and inductor;
ONNX / TensorRT refuse the model with a named error."""
import pytest
import torch
import torch.nn.functional as F

import anydit
from ditreduce import ScheduleError, compile_with_reduction
from ditreduce.errors import BackendError
from ditreduce.methods.uniform import uniform_selection
from ditreduce.regions import forced_regions

HALF = {"method": "uniform", "ratio": 0.5, "scope": "attention"}


def _model(text_after=False, **build):
    return anydit.persampletext(text_after=text_after, **build)


def _attend_reduced(blk, seq, image_at, n, kept, src):
    """TimmAttention (fused) over [text | kept image tokens]; each image token takes its kept token's output."""
    b, length, c = seq.shape
    q, k, v = blk.qkv(seq).reshape(b, length, 3, blk.heads, blk.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = blk.q_norm(q), blk.k_norm(k)
    text = [j for j in range(length) if not image_at <= j < image_at + n]
    rows = torch.tensor(text + (image_at + kept).tolist())
    y = F.scaled_dot_product_attention(q[:, :, rows], k[:, :, rows], v[:, :, rows])
    y_text, y_image = y[:, :, :len(text)], y[:, :, len(text):][:, :, src]
    y = torch.cat([y_image, y_text] if image_at == 0 else [y_text, y_image], 2)
    return blk.proj(y.transpose(1, 2).reshape(b, length, c))


def _reference(model, kw, k):
    """The model's forward in plain torch with uniform's selection of k image tokens at every self / joint
    attention: PerSampleTextDiT over [text | image] or [image | text], PerSampleCrossDiT's image
    self-attention (its cross-attention dense)."""
    x, t, context, mask = kw["x"], kw["t"], kw["context"], kw["context_mask"]
    b, _, hh, ww = x.shape
    p, h, w = model.p, hh // model.p, ww // model.p
    n = h * w
    sel = uniform_selection((h, w), k)
    kept, src = sel.kept[0], sel.src[0, :, 0]
    img = model.x_embedder(x).flatten(2).transpose(1, 2) + model.t_embedder(anydit._sincos(t, 32))[:, None]
    ctx = model.context_embedder(context)
    outs = []
    for i in range(b):
        text = ctx[i][mask[i]][None]
        if isinstance(model, anydit.PerSampleCrossDiT):
            tok = img[i:i + 1]
            for blk in model.blocks:
                tok = tok + _attend_reduced(blk.attn, blk.norm1(tok), 0, n, kept, src)
                tok = tok + blk.cross(blk.norm2(tok), text)
            outs.append(tok)
            continue
        seq = torch.cat([img[i:i + 1], text] if model.text_after else [text, img[i:i + 1]], 1)
        image_at = 0 if model.text_after else text.shape[1]
        for blk in model.blocks:
            seq = seq + _attend_reduced(blk, seq, image_at, n, kept, src)
        outs.append(seq[:, image_at:image_at + n])
    out = model.proj_out(torch.cat(outs, 0))
    return out.reshape(b, h, w, p, p, model.c).permute(0, 5, 1, 3, 2, 4).reshape(b, model.c, hh, ww)


def _other_lengths(kw, first=0):
    """The same shapes with other caption lengths: `first` tokens for sample 0, 3 for sample 1."""
    mask = torch.zeros_like(kw["context_mask"])
    mask[0, :first] = True
    mask[1, :3] = True
    return dict(kw, context_mask=mask)


@pytest.mark.parametrize("text_after", [False, True])
@pytest.mark.parametrize("forced", [False, True])
def test_ratio_zero_is_the_dense_model_exactly(text_after, forced):
    model, kw = _model(text_after)
    # forced: the kept tokens run in a permuted order, so attention sums in another order (float rounding)
    tol = dict(rtol=1e-5, atol=1e-6) if forced else dict(rtol=0, atol=0)
    with torch.no_grad(), forced_regions(forced):
        r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0, "scope": "attention"})
        torch.testing.assert_close(r(**kw), model(**kw), **tol)
        torch.testing.assert_close(r(**_other_lengths(kw)), model(**_other_lengths(kw)), **tol)


@pytest.mark.parametrize("text_after,fused", [(False, True), (True, True), (False, False)])
def test_ratio_half_matches_a_plain_torch_reference_for_every_text_length(text_after, fused):
    """fused=False: the hand-written softmax(q kᵀ) v spelling, canonicalised to one sdpa of run-time length."""
    model, kw = _model(text_after, fused=fused)
    r = compile_with_reduction(model, HALF)
    with torch.no_grad():
        for call in (kw, _other_lengths(kw)):
            torch.testing.assert_close(r(**call), _reference(model, call, k=8), rtol=1e-5, atol=1e-5)
            assert not torch.allclose(r(**call), model(**call), atol=1e-3)   # really reduced
    assert len(r.captures) == 1                      # one capture serves every caption length
    assert {region.meta["ditreduce_region"]["k"] for region in _regions(r)} == {8}


def _regions(r):
    return [n for n in r.variant(r.last_capture, r.last_key).graph.nodes if "ditreduce_region" in n.meta]


def test_report_names_the_per_sample_text_and_the_export_limit():
    model, kw = _model()
    r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})   # asks for attention+proj
    with torch.no_grad():
        r(**kw)
    rows = r.report()
    assert [(row.module, row.kind, row.text_tokens, row.scope) for row in rows] == [
        ("blocks.0", "joint", -1, "attention"), ("blocks.1", "joint", -1, "attention")] * 2
    assert all("text of run-time length" in row.scope_note for row in rows)
    assert "per sample" in str(rows)
    assert "blocks.0: text length read per sample at run time" in str(rows)
    assert "ONNX / TensorRT export need static token counts" in str(rows)


def test_onnx_export_and_the_onnxruntime_backend_are_named_errors(tmp_path):
    model, kw = _model()
    r = compile_with_reduction(model, HALF)
    with pytest.raises(BackendError, match="ONNX export needs static token counts") as e:
        r.export(tmp_path, num_steps=1, **kw)
    assert "blocks.0, blocks.1 attend to text whose length is read per sample" in str(e.value)
    assert "backend='eager' or 'inductor'" in str(e.value)
    ort = compile_with_reduction(model, HALF, backend="onnxruntime")
    with pytest.raises(BackendError, match="ONNX / TensorRT needs static token counts"), torch.no_grad():
        ort(**kw)


def test_cross_attention_to_per_sample_text_stays_dense_and_the_image_self_attention_is_reduced():
    model, kw = _model(cls=anydit.PerSampleCrossDiT)
    with torch.no_grad():
        with forced_regions():
            zero = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
            torch.testing.assert_close(zero(**kw), model(**kw), rtol=1e-5, atol=1e-6)  # permuted order: rounding
        r = compile_with_reduction(model, {"method": "uniform", "ratio": 0.5})   # attention+proj
        for call in (kw, _other_lengths(kw, first=1)):
            torch.testing.assert_close(r(**call), _reference(model, call, k=8), rtol=1e-5, atol=1e-5)
    rows = r.report()
    assert [(row.module, row.kind, row.reduced, row.scope) for row in rows] == [
        ("blocks.0.attn", "self", True, "attention+proj"), ("blocks.0.cross", "cross", False, "-"),
        ("blocks.1.attn", "self", True, "attention+proj"), ("blocks.1.cross", "cross", False, "-")] * 2


def test_text_around_both_sides_of_the_image_is_refused_by_name():
    """[text_i | image | text_i]: the image position is fixed from neither end; the site is skipped, named."""
    model, kw = _model()
    model.forward = _both_sides_forward.__get__(model)
    r = compile_with_reduction(model, HALF)
    with pytest.raises(ScheduleError, match="on both sides of the image"):
        r(**kw)


def _both_sides_forward(self, x, t, context, context_mask):
    img = self.x_embedder(x).flatten(2).transpose(1, 2) + self.t_embedder(anydit._sincos(t, 32))[:, None]
    ctx = self.context_embedder(context)
    outs = []
    for i in range(x.shape[0]):
        text = ctx[i][context_mask[i]][None]
        seq = torch.cat([text, img[i:i + 1], text], 1)
        for blk in self.blocks:
            seq = seq + blk(seq)
        outs.append(seq[:, text.shape[1]:text.shape[1] + img.shape[1]])
    return torch.cat(outs, 0)


def _dynamo_compiles() -> tuple[int, object]:
    """(graphs dynamo has compiled in this process, its latest compilation-metrics record), from dynamo's own
    counters: every compile, a recompile on a guard failing for a new caption length included, changes both."""
    from torch._dynamo.utils import counters, get_compilation_metrics

    metrics = get_compilation_metrics()
    return counters["stats"]["unique_graphs"], metrics[-1] if metrics else None


@pytest.mark.slow  # one cold inductor compile (~1-2 min on the 2-core machine)
def test_inductor_equals_eager_for_every_text_length_without_recompiling():
    """One variant, one runner and one dynamo compile for every caption length: dynamo's counters move on the
    first call only (a single graph: fullgraph), not for the other lengths."""
    model, kw = _model(depth=1)
    eager, ind = (compile_with_reduction(model, HALF, backend=b) for b in ("eager", "inductor"))
    with torch.no_grad():
        before = _dynamo_compiles()
        torch.testing.assert_close(ind(**kw), eager(**kw), rtol=1e-5, atol=1e-5)
        first = _dynamo_compiles()
        for call in (_other_lengths(kw), _other_lengths(kw, first=1)):
            torch.testing.assert_close(ind(**call), eager(**call), rtol=1e-5, atol=1e-5)
    assert len(ind.compile_seconds) == 1
    after = _dynamo_compiles()
    assert after[0] == first[0] and after[1] is first[1], (first, after)            # no length recompiled
    assert first[0] - before[0] == 1 and first[1] is not before[1], (before, first)  # the first call: one graph
