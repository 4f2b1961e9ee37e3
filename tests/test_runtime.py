"""ReducedModel as a drop-in transformer: outputs, attributes, step tracking, CFG, re-capture per signature."""
import pytest
import torch

import zoo
from ditreduce import ReducedModel, ScheduleError, compile_with_reduction


def test_return_dict_output_and_wrapped_attributes():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, "identity")
    with torch.no_grad():
        ref = model(**kw)
        out = reduced(**kw)
    assert type(out) is type(ref)
    torch.testing.assert_close(out.sample, ref.sample, rtol=0, atol=0)
    assert reduced.config is model.config and reduced.dtype == torch.float32 and reduced.device.type == "cpu"
    assert reduced.config.in_channels == 4 and reduced.pos_embed is model.pos_embed
    assert isinstance(reduced, torch.nn.Module)


def test_positional_arguments_are_bound_by_name():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, "identity")
    with torch.no_grad():
        out = reduced(kw["hidden_states"], kw["encoder_hidden_states"], timestep=kw["timestep"], return_dict=False)
        ref = model(**kw, return_dict=False)
    torch.testing.assert_close(out[0], ref[0], rtol=0, atol=0)


def test_new_resolution_or_batch_triggers_new_capture_not_wrong_result():
    reduced = None
    for grid, batch in [((4, 4), 2), ((6, 4), 2), ((4, 4), 3), ((4, 4), 2)]:
        model, kw = zoo.pixart(grid=grid, batch=batch)
        if reduced is None:
            reduced = compile_with_reduction(model, "uniform-50")
            first_model = model
        kw = dict(kw, return_dict=False)
        with torch.no_grad():
            out = reduced(**kw)[0]
            assert out.shape == first_model(**kw)[0].shape
    assert len(reduced.captures) == 3
    assert [r.grid for r in reduced.report() if r.reduced] == [(4, 4), (4, 4)]


def test_step_rules_pick_variants_per_step():
    model, kw = zoo.pixart()
    sched = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 2}, "method": "none"}]}
    reduced = compile_with_reduction(model, sched)
    kw = dict(kw, return_dict=False)
    keys = []
    with torch.no_grad():
        for t in (900.0, 900.0, 600.0, 300.0, 100.0):
            reduced(**dict(kw, timestep=torch.full((2,), t)))
            keys.append(reduced.last_key)
    dense = (None,) * 4
    assert keys[0] == keys[1] == keys[2] == dense  # steps 0, 0 (CFG second call), 1
    assert keys[3] == keys[4] != dense
    with torch.no_grad():  # the dense steps ran the captured graph unchanged: exact
        torch.testing.assert_close(reduced(**dict(kw, timestep=torch.full((2,), 950.0)))[0],
                                   model(**dict(kw, timestep=torch.full((2,), 950.0)))[0], rtol=0, atol=0)


def test_step_fraction_needs_num_steps_and_says_how():
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, "uniform-progressive")
    with pytest.raises(ScheduleError, match="num_steps"):
        reduced(**kw)
    with reduced.generation(num_steps=10), torch.no_grad():
        reduced(**kw)
        assert reduced.last_key == (None,) * 4  # first 10 % dense
    reduced.set_step(5, 10)
    with torch.no_grad():
        reduced(**kw)
    assert reduced.last_key[0].ratio == 0.25  # the preset's last rule: the last two blocks (all of this model)
    reduced.set_step(None)


def test_report_before_first_call_says_what_to_do():
    model, _ = zoo.pixart()
    with pytest.raises(RuntimeError, match="captures lazily"):
        compile_with_reduction(model, "uniform-50").report()


def test_wrapping_twice_is_an_error():
    model, _ = zoo.pixart()
    r = compile_with_reduction(model, "uniform-50")
    assert isinstance(r, ReducedModel)
    with pytest.raises(TypeError):
        compile_with_reduction(r, "uniform-50")


@pytest.mark.parametrize("method", ["uniform", "random", "todo", "coredit", "tome"])
def test_a_first_call_under_inference_mode_leaves_no_inference_tensor_behind(method):
    """The constants a reduced model keeps (static selections as buffers, in-graph methods' cached lattice
    tables) are built outside torch.inference_mode() even when the first call is inside it: a later call
    that records autograd runs (an inference tensor saved for backward was a RuntimeError) and gives the same
    output."""
    from ditreduce.methods.lattice import clear_tables

    clear_tables()   # the tables are built in this test's first call, whatever ran before it
    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, {"method": method, "ratio": 0.5, "num_steps": 4})
    reduced.set_step(3, 4)
    with torch.inference_mode():
        first = reduced(**kw)[0]
    x = kw["hidden_states"].clone().requires_grad_(True)
    out = reduced(**dict(kw, hidden_states=x))[0]
    out.square().sum().backward()
    torch.testing.assert_close(out.detach(), first, rtol=1e-5, atol=1e-5)
    assert x.grad is not None and x.grad.abs().sum() > 0
    if method in ("coredit", "tome"):   # in-graph: a table evicted from its cache is rebuilt by a later call
        clear_tables()
        with torch.inference_mode():
            reduced(**kw)
        reduced(**dict(kw, hidden_states=x))[0].sum().backward()
