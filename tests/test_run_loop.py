"""One run loop (run_state.run_call) for every runner: a research-style DiT called as `model(x, t, y)` with a
rising timestep runs the same variants at the same steps, with the same state, in process and from its
exported manifest (ONNX Runtime); a run whose length differs from the export's plan says so."""
import pytest
import torch

import anydit
import zoo
from ditreduce import RunLengthWarning, compile_with_reduction
from ditreduce.backends import BackendError
from ditreduce.backends.onnxruntime import load_onnx

# DiTo: dense step 0 primes nothing, then matchings carried as state from step to step
SCHED = {"method": "dito", "ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"}]}
TIMES = (0.0, 0.25, 0.5, 0.75)   # flow matching: t rises from 0 to 1


def _flow_run(model, x, y):
    """Euler steps of a flow-matching sampler calling model(x, t, y) positionally, as research code does."""
    outs = []
    for t in TIMES:
        out = model(x, torch.full((x.shape[0],), t), y)
        outs.append(out)
        x = x + 0.25 * out[:, :4]
    return outs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = anydit.OrigDiT(input_size=8).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([1, 3])
    reduced = compile_with_reduction(model, SCHED)
    out = tmp_path_factory.mktemp("tmodel")
    with torch.no_grad():
        reduced.export(out, num_steps=len(TIMES), x=x, t=torch.zeros(2), y=y)
    return model, reduced, load_onnx(out / "manifest.json"), x, y


@pytest.mark.slow
def test_a_t_model_runs_the_same_variants_and_outputs_in_process_and_from_its_export(exported):
    model, reduced, runner, x, y = exported
    with torch.no_grad():
        with reduced.generation(num_steps=len(TIMES)):
            eager = _flow_run(reduced, x, y)
        onnx = _flow_run(runner, x, y)
    steps = lambda gen: [(c.step, c.slot) for c in gen.history]  # noqa: E731
    assert steps(reduced.generations.last) == steps(runner.generations.last) == [(s, 0) for s in range(len(TIMES))]
    assert len({c.variant for c in runner.generations.last.history}) >= 3   # dense, prime / match, reduce
    manifest = runner.manifest
    for call in reduced.generations.last.history:   # the in-process variant is the one the manifest maps the step to
        assert manifest.variant_for_step(call.step).label == call.variant
    assert set(runner.state) == set(reduced.state)   # the same state slots and sites carried
    for a, b in zip(eager, onnx):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_run_of_another_length_than_the_export_s_plan_says_so(exported):
    model, reduced, runner, x, y = exported
    with torch.no_grad():
        with pytest.raises(BackendError, match="exported for num_steps=4"):
            with runner.generation(num_steps=3):
                pass
        with pytest.warns(RunLengthWarning, match="ran 2 steps, but its plan was made for 4"):
            with runner.generation():
                for t in TIMES[:2]:
                    runner(x, torch.full((2,), t), y)
        with pytest.raises(BackendError, match="outside the exported run of num_steps=4"):
            for t in (0.0, 0.1, 0.2, 0.3, 0.4):
                runner(x, torch.full((2,), t), y)
        for t in TIMES[:2]:   # a 2-step run counted from the timesteps ...
            runner(x, torch.full((2,), t), y)
        with pytest.warns(RunLengthWarning, match="previous generation ran 2 steps"):   # ... said at the next one
            runner(x, torch.full((2,), 0.0), y)


@pytest.mark.slow
def test_apply_gives_an_exported_transformer_the_pipeline_s_step_count(tmp_path):
    import ditreduce

    model, kw = zoo.dit(grid=(4, 4), batch=2)
    reduced = compile_with_reduction(model, "uniform-progressive")
    with torch.no_grad():
        reduced.export(tmp_path, num_steps=4, **kw)
    pipe = zoo.dit_pipeline(zoo.dit(grid=(4, 4))[0])
    pipe.transformer = load_onnx(tmp_path / "manifest.json")
    ditreduce.apply(pipe)
    pipe(class_labels=[1], num_inference_steps=4, output_type="np")
    assert [c.step for c in pipe.transformer.generations.last.history] == [0, 1, 2, 3]
    with pytest.raises(BackendError, match="exported for num_steps=4, the run has 6"):
        pipe(class_labels=[1], num_inference_steps=6, output_type="np")
