"""Fuzz: random small research-style DiTs and call arguments (batch 1-4, fp32 / bf16, odd lattices,
missing or extra inputs). Valid inputs with a lattice of at least 2×2 give a reduced model (>= 1 region,
run at ratio 0 through the full region path) with the dense output; a one-row or one-column lattice is
refused with the named error listed for the model. Inputs the model itself rejects raise a named error
or the model's own error unchanged."""
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import anydit
from ditreduce import ScheduleError, UnsupportedModelError, compile_with_reduction
from ditreduce.passes.capture import ModelCallError
from ditreduce.passes.layout import LayoutError
from ditreduce.passes.rewrite import region_nodes
from ditreduce.regions import forced_regions

NAMED = (ScheduleError, UnsupportedModelError, LayoutError, ModelCallError)
# the named error each model raises for a lattice it cannot reduce (one row or one column: no 2-D lattice)
REFUSED = {"origdit": ScheduleError, "xtransdit": ScheduleError, "regvit": ScheduleError, "packeddit": ScheduleError}


def _model(data, family):
    heads = data.draw(st.sampled_from([1, 2, 4]), label="heads")
    dim = heads * data.draw(st.sampled_from([4, 8]), label="head_dim")
    depth = data.draw(st.integers(1, 2), label="depth")
    if family == "origdit":
        return anydit.OrigDiT(input_size=16, hidden_size=dim, num_heads=heads, depth=depth)
    if family == "xtransdit":
        return anydit.XTransDiT(dim=dim, heads=heads, depth=depth)
    if family == "regvit":
        return anydit.RegViT(dim=dim, heads=heads, depth=depth, registers=data.draw(st.integers(1, 3)))
    return anydit.PackedDiT(dim=dim, heads=heads, depth=depth)


def _inputs(data, family, batch, dtype):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 999), label="seed"))
    h, w = data.draw(st.integers(1, 6), label="h"), data.draw(st.integers(1, 6), label="w")
    if family == "origdit":
        return dict(x=torch.randn(batch, 4, 2 * h, 2 * w, generator=g, dtype=dtype),
                    t=torch.randint(0, 1000, (batch,), generator=g), y=torch.randint(0, 10, (batch,), generator=g))
    if family == "xtransdit":
        text = data.draw(st.integers(1, 6), label="text")
        keep = torch.rand(batch, text, generator=g) > 0.3
        keep[:, 0] = True
        return dict(x=torch.randn(batch, 4, 2 * h, 2 * w, generator=g, dtype=dtype),
                    times=torch.rand(batch, generator=g) * 1000,
                    context=torch.randn(batch, text, 12, generator=g, dtype=dtype), context_mask=keep)
    if family == "regvit":
        return dict(pixels=torch.randn(batch, 3, 2 * h, 2 * w, generator=g, dtype=dtype),
                    cond=torch.randn(batch, 32, generator=g, dtype=dtype))
    f = data.draw(st.integers(1, 3), label="frames")
    return dict(tokens=torch.randn(batch, f * h * w, 8, generator=g, dtype=dtype), sigma=torch.rand(batch, generator=g),
                num_frames=f, height=h, width=w)


@settings(max_examples=int(os.environ.get("DITREDUCE_FUZZ_EXAMPLES", 15)), deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # shrinking rebuilds models: slow
@given(data=st.data())
def test_only_named_errors_or_the_dense_output(data):
    family = data.draw(st.sampled_from(sorted(anydit.HAND)), label="family")
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")
    batch = data.draw(st.integers(1, 4), label="batch")
    torch.manual_seed(0)
    model = _model(data, family).to(dtype).eval()
    kw = _inputs(data, family, batch, dtype)
    change = data.draw(st.sampled_from(["none", "none", "missing", "extra"]), label="change")
    if change == "missing":
        kw.pop(data.draw(st.sampled_from(sorted(kw)), label="dropped"))
    elif change == "extra":
        kw["unexpected"] = torch.zeros(batch)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
    try:
        with torch.no_grad():
            ref = model(**kw)
    except Exception as e:  # noqa: BLE001 — the model itself rejects these inputs: a named error, or the
        with pytest.raises(NAMED + (type(e),)), torch.no_grad():  # model's own error surfacing unchanged
            reduced(**kw)
        return
    h, w = _lattice(kw, family)
    if min(h, w) < 2:
        with pytest.raises(REFUSED[family], match="reduces no attention site"), torch.no_grad():
            reduced(**kw)
        return
    with torch.no_grad(), forced_regions():
        out = reduced(**kw)
    assert len(region_nodes(reduced.last_capture.variants[reduced.last_key])) >= 1
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


def _lattice(kw, family):
    if family == "packeddit":
        return kw["height"], kw["width"]
    x = kw.get("x", kw.get("pixels"))
    return x.shape[-2] // 2, x.shape[-1] // 2
