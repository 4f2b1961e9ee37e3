"""The run model: one step clock (both timestep directions), one state store with CFG slots, one run plan
per (analysis, num_steps), used alike by the eager runtime and the manifest runners; threads and misuse."""
import threading
import warnings

import pytest
import torch

import zoo
from ditreduce import ModelCallError, ScheduleError, StepClock, StepClockWarning, compile_with_reduction
from ditreduce.passes import pipeline
from ditreduce.run_state import Generation

FALLING = [999.0, 800.0, 600.0, 400.0, 200.0, 50.0]
RISING = [0.0, 0.2, 0.4, 0.6, 0.8, 0.95]


def _dito(num_steps=None, dense=0):
    s = {"version": 1, "method": "dito", "ratio": 0.5, "scope": "attention",
         "params": {"dito": {"interval": 2, "cfg": "per_sample"}}, "rules": []}
    if num_steps:
        s["num_steps"] = num_steps
    if dense:
        s["rules"].append({"steps": {"start": 0, "stop": dense}, "method": "none"})
    return s


STEPPED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 2}, "method": "none"},
                                   {"steps": {"start": 4}, "ratio": 0.25}]}


def _call(reduced, kw, t, **over):
    with torch.no_grad():
        return reduced(**dict(kw, timestep=torch.full_like(kw["timestep"], t), return_dict=False, **over))[0]


# --- the clock ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("times, steps, news", [
    ([999, 999, 500, 500, 10, 999, 700], [0, 0, 1, 1, 2, 0, 1], [1, 0, 0, 0, 0, 1, 0]),   # falling, CFG pairs
    ([0, 0.25, 0.25, 0.5, 1.0, 0.0, 0.5], [0, 1, 1, 2, 3, 0, 1], [1, 0, 0, 0, 0, 1, 0]),  # rising, restart
    ([1.0, 0.5, 0.7], [0, 1, 0], [1, 0, 1]),                                                  # reversal restarts
])
def test_clock_counts_both_directions(times, steps, news):
    clock = StepClock()
    got = [(int(clock.observe(float(t))), clock.step) for t in times]
    assert [s for _, s in got] == steps and [n for n, _ in got] == news


def test_nan_timestep_is_a_named_error():
    with pytest.raises(ModelCallError, match="NaN"):
        Generation().advance(torch.tensor([float("nan")]), None)


def test_first_timestep_again_with_another_latent_is_a_new_generation_not_a_cfg_call():
    gen = Generation()
    a, b = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    first = gen.advance(999.0, a)
    cfg_second = gen.advance(999.0, a)
    assert (first.slot, cfg_second.slot, cfg_second.generation) == (0, 1, first.generation)
    restart = gen.advance(999.0, b)
    assert (restart.step, restart.slot) == (0, 0) and restart.generation != first.generation


# --- rising vs falling samplers on a model -----------------------------------------------------------
@pytest.mark.parametrize("schedule", [_dito(), STEPPED], ids=["dito", "stepped"])
def test_rising_and_falling_samplers_run_the_same_variants(schedule):
    model, kw = zoo.pixart()
    seqs = {}
    for name, times in (("falling", FALLING), ("rising", RISING)):
        reduced = compile_with_reduction(model, schedule)
        for t in times:
            _call(reduced, kw, t)
        hist = reduced.generations.last.history
        assert [c.step for c in hist] == list(range(len(times)))
        seqs[name] = [c.variant for c in hist]
        assert "last generation: 6 calls on 6 steps observed" in str(reduced.report())
    assert seqs["falling"] == seqs["rising"]
    if schedule is STEPPED:
        assert seqs["rising"][:2] == ["dense", "dense"] and "uniform:0.25" in seqs["rising"][4]
    else:  # DiTo primes at its first step and reduces from the second, in both directions
        assert "prime" in seqs["rising"][0] and "match" in seqs["rising"][1] and "reduce" in seqs["rising"][2]


def test_dito_reduces_from_its_second_step_under_a_rising_sampler():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, _dito())
    outs = [_call(reduced, kw, t) for t in RISING]
    with torch.no_grad():
        dense = [model(**dict(kw, timestep=torch.full_like(kw["timestep"], t), return_dict=False))[0] for t in RISING]
    torch.testing.assert_close(outs[0], dense[0], rtol=1e-5, atol=1e-5)   # prime: dense attention
    assert all((o - d).abs().max() > 1e-3 for o, d in zip(outs[1:], dense[1:]))  # reduced from step 1 on


def test_a_clock_that_never_advances_warns_for_a_step_dependent_schedule():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, STEPPED)
    with pytest.warns(StepClockWarning, match="set_step"):
        for i in range(5):  # one timestep, a new latent every call (a sampler that passes a constant t)
            _call(reduced, kw, 500.0, hidden_states=kw["hidden_states"] + i)
    plain = compile_with_reduction(model, "uniform-50")  # no step rules: nothing to warn about
    with warnings.catch_warnings():
        warnings.simplefilter("error", StepClockWarning)
        for _ in range(5):
            _call(plain, kw, 500.0)


# --- the plan ------------------------------------------------------------------------------------------
def test_plan_is_computed_once_per_analysis_and_num_steps(monkeypatch):
    calls = []
    real = pipeline.plan_run
    monkeypatch.setattr(pipeline, "plan_run", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, _dito(dense=2))
    for _ in range(2):
        with reduced.generation(num_steps=6):
            for t in FALLING:
                _call(reduced, kw, t)
                _call(reduced, kw, t)  # CFG as two calls
    reduced.report(num_steps=6)
    assert calls.count(6) == 1


def test_too_many_variants_is_a_schedule_error():
    model, kw = zoo.pixart(grid=(8, 8))
    rules = [{"steps": [i], "ratio": round(0.05 * (i % 15), 2)} for i in range(30)]
    reduced = compile_with_reduction(model, {"ratio": 0.5, "num_steps": 30, "rules": rules}, max_variants=8)
    reduced.capture(**kw)
    with pytest.raises(ScheduleError, match="max_variants=8"):
        reduced.report(num_steps=30)


# --- steps under misuse -------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [(-1,), (100, 8), (3, 0), (True,), ("2",), (1.7,)])
def test_set_step_takes_ints_in_range(args):
    model, _ = zoo.pixart()
    with pytest.raises(ScheduleError, match="set_step"):
        compile_with_reduction(model, "uniform-50").set_step(*args)


def test_a_step_past_num_steps_is_an_error_not_the_default_ratio():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, STEPPED)
    with reduced.generation(num_steps=4), pytest.raises(ScheduleError, match="past the run's num_steps=4"):
        for t in FALLING:
            _call(reduced, kw, t)


def test_nested_generation_leaves_the_outer_run_as_it_was():
    model, kw = zoo.pixart()
    ref_model = compile_with_reduction(model, _dito())
    ref = [_call(ref_model, kw, t) for t in FALLING[:4]]
    reduced = compile_with_reduction(model, _dito())
    got = []
    with reduced.generation():
        for i, t in enumerate(FALLING[:4]):
            if i == 2:
                with reduced.generation():
                    pass
            got.append(_call(reduced, kw, t))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_interrupted_generation_restarted_with_a_new_latent_reads_no_stale_state():
    model, kw = zoo.pixart()
    fresh = compile_with_reduction(model, _dito())
    x2 = kw["hidden_states"] * 0.5
    ref = [_call(fresh, kw, t, hidden_states=x2) for t in FALLING[:3]]
    reduced = compile_with_reduction(model, _dito())
    _call(reduced, kw, FALLING[0])  # interrupted after its first call
    got = [_call(reduced, kw, t, hidden_states=x2) for t in FALLING[:3]]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- threads ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", [_dito(), STEPPED], ids=["dito", "stepped"])
def test_threads_each_running_a_generation_get_the_single_threaded_outputs(schedule):
    model, kw = zoo.pixart()
    latents = [kw["hidden_states"] * (1 + 0.1 * i) for i in range(4)]
    single = compile_with_reduction(model, schedule)
    ref = [[_call(single, kw, t, hidden_states=x) for t in FALLING] for x in latents]
    shared = compile_with_reduction(model, schedule)
    got, errors = [None] * 4, []
    barrier = threading.Barrier(4)

    def run(i):
        try:
            barrier.wait()
            got[i] = [_call(shared, kw, t, hidden_states=latents[i]) for t in FALLING]
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(shared.captures) == 1
    for g, r in zip(got, ref):
        for a, b in zip(g, r):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- one run model on every backend ---------------------------------------------------------------
def _two_call_generation(run, kw, halves, times):
    outs = []
    with torch.no_grad(), run.generation(num_steps=len(times)):
        for t in times:
            outs.append([run(**dict(h, timestep=torch.full((1,), t), return_dict=False))[0] for h in halves])
    return outs


def test_dito_with_cfg_as_two_calls_runs_alike_eager_and_onnxruntime(tmp_path):
    """CFG as two calls per step (uncond, cond): each half keeps its own DiTo state (slot 0 / 1) in the eager
    runtime and in the ONNX Runtime manifest runner, and the two agree over a whole generation."""
    pytest.importorskip("onnxruntime")
    from ditreduce.backends.onnxruntime import load_onnx

    model, kw = zoo.pixart(batch=1)
    halves = [kw, dict(kw, encoder_hidden_states=torch.zeros_like(kw["encoder_hidden_states"]))]
    times = [950.0, 850.0, 750.0, 650.0, 550.0, 450.0, 350.0, 250.0, 150.0, 50.0]
    sched = _dito(num_steps=len(times), dense=2)
    eager = compile_with_reduction(model, sched)
    ref = _two_call_generation(eager, kw, halves, times)
    assert {slot for slot, _ in eager.state} == {0, 1}
    sites = {site for _, site in eager.state}
    assert any(not torch.equal(eager.state[(0, s)]["y"], eager.state[(1, s)]["y"]) for s in sites)  # halves differ
    eager.export(tmp_path, num_steps=len(times), **kw, return_dict=False)
    ort = load_onnx(tmp_path / "manifest.json")
    got = _two_call_generation(ort, kw, halves, times)
    assert {slot for slot, _ in ort.state} == {0, 1}
    for i, (g, r) in enumerate(zip(got, ref)):
        for a, b in zip(g, r):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {i}")


def test_in_process_runners_export_a_stateful_variant_with_its_state_io():
    """backend="onnxruntime" and "tensorrt" share ExportedVariant: the graph they build from a DiTo `reduce`
    variant has the state inputs and outputs (the I/O list a TensorRT engine is built with)."""
    from ditreduce.backends.exported import ExportedVariant

    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, _dito(num_steps=4))
    cap = reduced.capture(**kw)
    plan = reduced.plan(cap, 4)
    key = next(k for k in plan.keys if any(c is not None and dict(c.params).get("phase") == "reduce" for c in k))
    seen = {}

    def record(proto, ins, outs):
        seen["ins"], seen["outs"] = [s.name for s in ins], [s.name for s in outs]
        return lambda feeds: {}

    ExportedVariant(reduced.variant(cap, key), kw, record)
    state_in = {n.rsplit(".", 1)[1] for n in seen["ins"] if n.startswith("state.")}
    state_out = {n.rsplit(".", 1)[1] for n in seen["outs"] if n.startswith("state_out.")}
    assert state_in == state_out == {"y", "count", "merged", "unmerged", "arg", "kept", "src", "mw", "wmix", "sizes"}


def test_a_modules_glob_that_matches_no_site_is_warned_and_reported():
    model, kw = zoo.pixart()
    sched = {"ratio": 0.5, "rules": [{"modules": "transfomer_blocks.*", "ratio": 0.2}]}   # typo
    reduced = compile_with_reduction(model, sched)
    with pytest.warns(UserWarning, match="matches no attention site"):
        reduced.capture(**kw)
    assert any("rules[0].modules 'transfomer_blocks.*' matches no attention site" in n for n in reduced.report().notes)


def test_held_state_has_one_layout_whatever_produced_it():
    """A compiled variant guards on its state inputs' strides: held state must have the strides of the zeros
    the first step is fed, also when a variant returns a slice or an empty tensor (DiTo's `unmerged` at its
    largest ratio is [B, 0]; as a slice its strides differ from torch.zeros((B, 0))'s: inductor recompiled)."""
    from ditreduce.run_state import StateStore

    base = torch.arange(12.0).reshape(2, 6)
    produced = {"unmerged": base[:, 6:], "merged": base[:, 1:4], "wide": base.t()}
    store = StateStore()
    store.update(0, {"site": produced})
    for name, t in store.held[(0, "site")].items():
        ref = torch.zeros(produced[name].shape)
        assert t.stride() == ref.stride(), name
        torch.testing.assert_close(t, produced[name])
