"""A user's first hour with a reduced model: the README's pipeline one-liner with every preset (first call
included), the step count a pipeline gives, report() after a real run, an ordinary module to copy, pickle,
save and load, torch.compile of a reduced model, the named errors for what cannot be wrapped, and a schedule
swap that re-derives what depends on the schedule."""
import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch

import ditreduce
import zoo
from ditreduce import NotAModelError, compile_with_reduction, load_schedule
from ditreduce.errors import ModelCallError, ScheduleError
from ditreduce.schedules import presets
from ditreduce.backends import variant_label


def _pipe():
    return zoo.dit_pipeline(zoo.dit(grid=(4, 4))[0])


def _run(pipe, steps=6, labels=(1,)):
    return pipe(class_labels=list(labels), num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def _steps_and_variants(reduced):
    return [(c.step, c.variant) for c in reduced.generations.last.history]


@pytest.mark.parametrize("preset", presets())
def test_apply_runs_every_preset_on_its_first_call_as_an_explicit_generation_would(preset):
    pipe = _pipe()
    ditreduce.apply(pipe, preset)
    first = _run(pipe)
    seen = _steps_and_variants(pipe.transformer)
    # the same run told its length by hand: the same variants at the same steps, the same images
    by_hand = _pipe()
    by_hand.transformer = compile_with_reduction(by_hand.transformer, preset)
    with by_hand.transformer.generation(num_steps=6):
        expected = _run(by_hand)
    assert seen == _steps_and_variants(by_hand.transformer)
    assert [s for s, _ in seen] == list(range(6))
    np.testing.assert_array_equal(first, expected)
    assert type(pipe).__name__ == "DiTPipeline"


def test_apply_resolves_step_fractions_for_each_call_s_own_length():
    pipe = ditreduce.apply(_pipe(), "dito-default")
    reduced = pipe.transformer
    for steps in (5, 10):
        _run(pipe, steps=steps)
        plan = reduced.plan(reduced.last_capture, steps)
        want = [(s, variant_label(plan.keys[plan.per_step[s]])) for s in range(steps)]
        assert _steps_and_variants(reduced) == want
        assert sum(v == "dense" for _, v in want) == round(0.2 * steps) - 1   # the last dense step primes DiTo


def test_a_generation_s_length_serves_the_later_runs_of_its_thread():
    """Transformer-only: after one `with generation(num_steps=N)` run, plain pipeline calls resolve step
    fractions with N (the README's one extra line, needed once)."""
    pipe = _pipe()
    pipe.transformer = compile_with_reduction(pipe.transformer, "dito-default")
    with pytest.raises(ScheduleError, match="needs the number of denoising steps"):
        _run(pipe)
    with pipe.transformer.generation(num_steps=6):
        first = _run(pipe)
    second = _run(pipe)
    assert [s for s, _ in _steps_and_variants(pipe.transformer)] == list(range(6))
    np.testing.assert_array_equal(first, second)


def test_report_after_a_pipeline_run_tells_what_the_run_did():
    pipe = ditreduce.apply(_pipe(), "dito-default")
    _run(pipe)
    rep = pipe.transformer.report()
    sites = [r for r in rep if r.kind == "self"]
    assert sites and all(r.reduced and r.skip_reason is None for r in sites)
    assert all(r.schedule.startswith("0 dense") and "dito:0.5" in r.schedule for r in sites)
    dense, reduced = rep.run_flops
    assert reduced < dense
    assert rep.run_model_flops[1] < rep.run_model_flops[0]   # whole-model FLOPs of stateful variants counted too


def test_report_without_a_known_length_shows_the_reduction_and_says_the_length_is_unknown():
    model, kw = zoo.dit(grid=(4, 4))
    reduced = compile_with_reduction(model, "uniform-progressive")
    reduced.capture(**kw)
    rep = reduced.report()
    dense, red = rep.totals()
    assert red < dense and all(r.reduced for r in rep if r.kind == "self")
    assert any("number of steps is unknown" in n for n in rep.notes)
    assert "0.0% fewer" not in str(rep)


def test_hasattr_answers_false_for_a_missing_attribute():
    for model in (zoo.dit()[0], zoo.HandDiT()):
        reduced = compile_with_reduction(model, "uniform-50")
        assert not hasattr(reduced, "no_such_attribute")
        assert reduced.config is model.config if hasattr(model, "config") else True


@pytest.mark.parametrize("what", ["pipeline", "none", "reduced"])
def test_what_cannot_be_wrapped_is_a_named_error_with_the_way_out(what):
    pipe = _pipe()
    bad = {"pipeline": pipe, "none": None, "reduced": compile_with_reduction(pipe.transformer, "uniform-50")}[what]
    with pytest.raises(NotAModelError) as e:
        compile_with_reduction(bad, "uniform-50")
    assert {"pipeline": "pipe.transformer", "none": "nn.Module", "reduced": ".model"}[what] in str(e.value)
    assert isinstance(e.value, TypeError)
    with pytest.raises(NotAModelError, match="transformer"):
        ditreduce.apply(zoo.dit()[0], "uniform-50")


def _reduced_out(reduced, kw):
    with torch.no_grad():
        return reduced(**kw, return_dict=False)[0]


def test_a_reduced_model_copies_pickles_and_saves_like_a_module():
    model, kw = zoo.dit(grid=(4, 4))
    reduced = compile_with_reduction(model, "uniform-50")
    want = _reduced_out(reduced, kw)
    buf = io.BytesIO()
    torch.save(reduced, buf)
    buf.seek(0)
    for other in (copy.deepcopy(reduced), pickle.loads(pickle.dumps(reduced)), torch.load(buf, weights_only=False)):
        assert other.captures == {} and other.schedule == reduced.schedule
        torch.testing.assert_close(_reduced_out(other, kw), want, rtol=0, atol=0)


def test_state_dict_has_the_model_s_keys_and_loading_weights_reaches_the_captured_graphs():
    model, kw = zoo.dit(grid=(4, 4))
    reduced = compile_with_reduction(model, "identity")
    _reduced_out(reduced, kw)   # captured with the first weights
    assert list(reduced.state_dict()) == list(model.state_dict())
    other, _ = zoo.dit(grid=(4, 4), seed=5)
    reduced.load_state_dict(other.state_dict())
    with torch.no_grad():
        want = other(**kw, return_dict=False)[0]
    torch.testing.assert_close(_reduced_out(reduced, kw), want, rtol=1e-5, atol=1e-5)
    fresh, _ = zoo.dit(grid=(4, 4), seed=9)
    assert fresh.load_state_dict(reduced.state_dict()) is not None
    torch.testing.assert_close(fresh(**kw, return_dict=False)[0], want, rtol=0, atol=0)


def test_a_pipeline_saves_the_transformer_s_weights_and_schedule_and_loads_back(tmp_path):
    from diffusers import DiTPipeline

    pipe = ditreduce.apply(_pipe(), "coredit-default")
    want = _run(pipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.save_pretrained(tmp_path)
    saved = tmp_path / "transformer" / "ditreduce_schedule.yaml"
    assert load_schedule(saved) == pipe.transformer.schedule
    loaded = DiTPipeline.from_pretrained(tmp_path)
    assert type(loaded.transformer).__name__ == "DiTTransformer2DModel"
    ditreduce.apply(loaded, saved)
    np.testing.assert_array_equal(_run(loaded), want)
    copied = copy.deepcopy(pipe)   # still applied: each call one generation of the scheduler's steps
    assert type(copied) is type(pipe)
    np.testing.assert_array_equal(_run(copied), want)
    ditreduce.remove(pipe)
    assert type(pipe) is DiTPipeline and type(pipe.transformer).__name__ == "DiTTransformer2DModel"


def test_torch_compile_of_a_reduced_model_works_on_its_first_call():
    model, kw = zoo.dit(grid=(4, 4))
    reduced = compile_with_reduction(model, "uniform-50")
    compiled = torch.compile(reduced)
    with torch.no_grad():
        out = compiled(**kw, return_dict=False)[0]
    torch.testing.assert_close(out, _reduced_out(compile_with_reduction(zoo.dit(grid=(4, 4))[0], "uniform-50"), kw),
                               rtol=0, atol=0)


def test_a_dtype_change_recaptures_and_a_call_that_does_not_fit_is_a_model_call_error():
    model, kw = zoo.dit(grid=(4, 4))
    reduced = compile_with_reduction(model, "identity")
    _reduced_out(reduced, kw)
    reduced.to(torch.float64)
    with pytest.raises(ModelCallError, match="fails on these arguments"):
        _reduced_out(reduced, kw)
    kw64 = {k: v.double() if v.is_floating_point() else v for k, v in kw.items()}
    out = _reduced_out(reduced, kw64)
    with torch.no_grad():
        want = model(**kw64, return_dict=False)[0]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9)


def test_a_schedule_swap_applies_the_new_layout_override():
    model, kw = zoo.flux(grid=(4, 4))
    kw["img_ids"] = kw["img_ids"][torch.randperm(16, generator=torch.Generator().manual_seed(0))]  # not row-major
    layout = {"text_tokens": 6, "text_position": "before"}
    reduced = compile_with_reduction(model, {"ratio": 0.5, "layout": dict(layout, grid=[4, 4])})
    reduced.capture(**kw)
    assert {rec.grid for rec in reduced.report()} == {(4, 4)}
    reduced.schedule = {"ratio": 0.5, "layout": dict(layout, grid=[2, 8])}
    reduced.capture(**kw)
    assert {rec.grid for rec in reduced.report()} == {(2, 8)}
    with pytest.raises(ScheduleError, match="every method in the schedule is `none`"):
        reduced.schedule = {"method": "none", "layout": dict(layout, grid=[2, 8])}
    with pytest.warns(UserWarning, match="matches no attention site"):
        reduced.schedule = {"ratio": 0.5, "layout": dict(layout, grid=[2, 8]),
                            "rules": [{"modules": "nothing.*", "ratio": 0.3}]}
    assert any("matches no attention site" in n for n in reduced.last_capture.notes)


def test_inspect_without_steps_says_the_step_count_is_unknown_and_shows_the_reduction(capsys):
    from ditreduce.cli import main

    assert main(["inspect", "zoo:pixart_example", "--schedule", "uniform-progressive"]) == 0
    out = capsys.readouterr().out
    assert "number of steps is unknown" in out and "per step fraction" in out
    assert "method none at every step" not in out and "(0.0% fewer)" not in out


def test_the_loaders_are_importable_from_the_package():
    from ditreduce import load_onnx, load_tensorrt
    from ditreduce.backends.onnxruntime import load_onnx as onnx_loader
    from ditreduce.backends.tensorrt import load_tensorrt as trt_loader

    assert load_onnx is onnx_loader and load_tensorrt is trt_loader
    with pytest.raises(AttributeError, match="no_such_name"):
        ditreduce.no_such_name   # noqa: B018
