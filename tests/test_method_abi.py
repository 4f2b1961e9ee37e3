"""The method ABI, proved by a method written outside the package (tests/user_method.py, `normkeep`:
registered from user code, state carried from call to call): registration alone gives it its bench entry and
default schedule; it runs eager, inductor and ONNX Runtime with the same outputs, in the bench and in
report(); ratio 0 (plain and forced) is the dense model; its selection passes the region's loop reference."""
import pytest
import torch

import user_method
import zoo
from ditreduce import compile_with_reduction
from ditreduce.bench import runner
from ditreduce.bench.models import ModelSpec
from ditreduce.methods import METHODS, SiteContext, get_method, preferred_methods, register_method
from ditreduce.regions import attention_region, forced_regions
from ditreduce.schedules import default_schedule
from test_references import ref_region

SCHED = {"method": "normkeep", "ratio": 0.5}


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """Registered from user code for this module's tests (the other modules see the built-in methods only)."""
    register_method(user_method.NormKeep)
    yield
    METHODS.pop("normkeep")
TIMESTEPS = (900, 600, 300)


def _generation(reduced, kw):
    outs = []
    with torch.no_grad(), reduced.generation(num_steps=len(TIMESTEPS)):
        for t in TIMESTEPS:
            outs.append(reduced(**dict(kw, timestep=torch.full((2,), t)), return_dict=False)[0])
    return outs


def test_registration_gives_the_method_its_bench_entry_and_default_schedule():
    assert preferred_methods()[-1] == "normkeep" and "normkeep" in runner.default_methods()
    assert default_schedule("normkeep")["method"] == "normkeep"
    runner.validate(runner.BenchSettings(methods=["normkeep"], ratios=[0.5], scopes=["attention", "block"]))


@pytest.mark.parametrize("scope", ["attention", "attention+proj", "block"])
@pytest.mark.parametrize("forced", [False, True])
def test_ratio_zero_is_the_dense_model_in_every_scope(scope, forced):
    model, kw = zoo.pixart(grid=(4, 4))
    with torch.no_grad():
        dense = [model(**dict(kw, timestep=torch.full((2,), t)), return_dict=False)[0] for t in TIMESTEPS]
    reduced = compile_with_reduction(model, {"method": "normkeep", "ratio": 0.0, "scope": scope})
    with forced_regions(forced):
        outs = _generation(reduced, kw)
    assert reduced.report()[0].scope == scope
    if forced:   # the selection's bookkeeping ran: a topk over every token and the copy map
        assert "normkeep" in reduced.generations.last.history[-1].variant
    for a, b in zip(outs, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_its_selection_passes_the_region_loop_reference():
    g = torch.Generator().manual_seed(0)
    lattice, n, k = (4, 5), 20, 9
    ctx = SiteContext(n=n, k=k, lattice=lattice, batch=2, channels=8)
    sel, new = get_method("normkeep")().selection(None, {"norm": torch.rand(2, n, generator=g)}, ctx)
    assert new == {} and sel.kept.shape == (2, k)
    q, kk, v = (torch.randn(2, 2, n + 3, 8, generator=g) for _ in range(3))   # 3 text tokens before the image
    from ditreduce.regions import embed_in_sequence

    seq = embed_in_sequence(sel, 3, n + 3)
    got = attention_region(q, kk, v, None, *seq, reduce_q=True)
    torch.testing.assert_close(got, ref_region(q, kk, v, None, sel, text=3), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_it_runs_alike_on_eager_inductor_and_onnxruntime_and_shows_in_report():
    model, kw = zoo.pixart(grid=(4, 4))
    eager = compile_with_reduction(model, SCHED)
    want = _generation(eager, kw)
    (site, *_) = eager.report()
    assert site.reduced and site.schedule == "0-2 normkeep:0.5" and site.flops_reduced < site.flops_dense
    assert {name for (_, _), held in eager.state.items() for name in held} == {"norm"}
    for backend in ("inductor", "onnxruntime"):
        other = compile_with_reduction(model, SCHED, backend=backend)
        for a, b in zip(_generation(other, kw), want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_the_bench_times_it_like_a_built_in_method():
    model, kw = zoo.pixart(grid=(4, 4))
    settings = runner.BenchSettings(methods=["normkeep"], ratios=[0.5], quality=False, memory=False, repeats=1,
                                    steps=3, equal_flops=False, scopes=["attention"])
    (row,) = runner.bench_model(ModelSpec("pixart", model, kw), settings, [])
    assert row.error is None and row.method == "normkeep"
    assert row.flops.attention_ratio < 1.0
