"""Fuzz: random small research-style DiTs and call arguments (batch 1-4, fp32 / bf16, odd lattices,
missing or extra inputs). The compiled model either gives the dense output (ratio 0) or raises a named
error — never a raw torch exception of its own (where the model itself rejects the inputs, its own error
may surface unchanged)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import anydit
from ditreduce import ScheduleError, UnsupportedModelError, compile_with_reduction
from ditreduce.passes.capture import ModelCallError
from ditreduce.passes.layout import LayoutError

NAMED = (ScheduleError, UnsupportedModelError, LayoutError, ModelCallError)


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
    try:
        with torch.no_grad():
            out = reduced(**kw)
    except NAMED as e:
        assert type(model).__name__ in str(e) or "site" in str(e) or "layout" in str(e)
        return
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
