"""backend= of compile_with_reduction: named errors, ONNX Runtime parity with eager per model family and
across step switches, a diffusers pipeline sampling through an exported manifest, state tensors carried by
the manifest runner, inductor parity (slow), export_programs + AOTInductor on CPU (slow)."""
import numpy as np
import onnx
import pytest
import torch
from torch import nn

import zoo
from ditreduce import compile_with_reduction
from ditreduce.backends import BackendError
from ditreduce.backends.manifest import Manifest, Variant, WeightsFile, save_manifest
from ditreduce.backends.onnx_graph import to_onnx
from ditreduce.backends.onnxruntime import load_onnx
from ditreduce.backends.programs import export_program
from ditreduce.backends.weights import share_weights
from ditreduce.regions import size_forms

SCHED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"},
                                 {"steps": {"start": 2}, "ratio": 0.25}]}


def test_unknown_backend_is_a_named_error():
    model, _ = zoo.pixart()
    with pytest.raises(BackendError, match="allowed: eager, inductor, aotinductor, onnxruntime, tensorrt"):
        compile_with_reduction(model, "uniform-50", backend="tvm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where TensorRT / CUDA are missing")
def test_tensorrt_backend_without_tensorrt_or_gpu_says_why():
    model, _ = zoo.pixart()
    with pytest.raises(BackendError, match="TensorRT is not installed|CUDA GPU"):
        compile_with_reduction(model, "uniform-50", backend="tensorrt")


@pytest.mark.parametrize("family", ["pixart", "sd3", "flux"])
def test_onnxruntime_backend_matches_eager(family):
    model, kw = zoo.build(family)
    eager = compile_with_reduction(model, "uniform-50")
    ort = compile_with_reduction(model, "uniform-50", backend="onnxruntime")
    with torch.no_grad():
        ref, got = eager(**kw, return_dict=False)[0], ort(**kw, return_dict=False)[0]
        dense = model(**kw, return_dict=False)[0]
    assert not torch.allclose(ref, dense, atol=1e-3)  # the reduced variant ran, not the dense graph
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_onnxruntime_backend_matches_eager_on_the_small_dit_at_low_res():
    from ditreduce.smalldit.models import load_small_dit

    m = load_small_dit()
    kw = dict(hidden_states=torch.randn(2, 3, 16, 16), encoder_hidden_states=m.captions(torch.tensor([0, 6])).detach(),
              timestep=torch.full((2,), 700.0), return_dict=False)
    eager = compile_with_reduction(m.transformer, "uniform-50")
    ort = compile_with_reduction(m.transformer, "uniform-50", backend="onnxruntime")
    with torch.no_grad():
        ref, got = eager(**kw)[0], ort(**kw)[0]
    assert sum(c is not None for c in ort.last_key) == 8  # all eight self-attention sites reduced
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_onnxruntime_backend_switches_variants_per_step():
    model, kw = zoo.pixart()
    eager, ort = (compile_with_reduction(model, SCHED, backend=b) for b in ("eager", "onnxruntime"))
    for t in (900.0, 700.0, 500.0):
        k = dict(kw, timestep=torch.full((2,), t), return_dict=False)
        with torch.no_grad():
            ref, got = eager(**k)[0], ort(**k)[0]
        assert eager.last_key == ort.last_key
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert len(ort.last_capture.runners) == 3


def test_dit_pipeline_samples_through_the_onnx_manifest(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    transformer, _ = zoo.dit(grid=(4, 4))
    pipe = zoo.dit_pipeline(transformer)
    reduced = compile_with_reduction(transformer, SCHED)
    example = dict(hidden_states=torch.zeros(4, 4, 8, 8), timestep=torch.zeros(4, dtype=torch.long),
                   class_labels=torch.zeros(4, dtype=torch.long), return_dict=False)
    with torch.no_grad():
        manifest = reduced.export(tmp_path, num_steps=4, **example)
    assert len(manifest.variants) == 3

    def run():
        return pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    pipe.transformer = compile_with_reduction(transformer, SCHED)
    ref = run()
    pipe.transformer = load_onnx(tmp_path / "manifest.json")
    got = run()
    assert pipe.transformer.last_variant == "v2"
    assert peak_signal_noise_ratio(ref, got, data_range=1.0) >= 40.0
    np.testing.assert_allclose(got, ref, atol=1e-3)


class _Stateful(nn.Module):
    """A hand-made stateful variant: the state enters as `state` and leaves under the output key `state`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 8)

    def forward(self, hidden_states, timestep, state):
        acc = state["blk0.acc"]
        y = self.lin(hidden_states) + acc[:, None] * timestep[:, None, None] / 1000
        return y, {"state": {"blk0.acc": acc + hidden_states.mean(1)}}


def test_state_tensors_are_graph_inputs_outputs_and_carried_between_steps(tmp_path):
    module = _Stateful().eval()
    kw = dict(hidden_states=torch.randn(2, 16, 8), timestep=torch.full((2,), 900.0),
              state={"blk0.acc": torch.zeros(2, 8)})
    proto, ins, outs = to_onnx(export_program(module, kw), kw)
    assert [t.name for t in ins] == ["hidden_states", "timestep", "state.blk0.acc"]
    assert [t.name for t in outs] == ["out.0", "state_out.blk0.acc"]
    assert [i.name for i in proto.graph.input][-1] == "state.blk0.acc"
    assert [o.name for o in proto.graph.output][-1] == "state_out.blk0.acc"
    size, _ = share_weights({"v0": proto}, tmp_path / "weights.bin", min_bytes=200)  # the 8x8 weight (256 B) external
    (tmp_path / "v0.onnx").write_bytes(proto.SerializeToString())
    onnx.checker.check_model(str(tmp_path / "v0.onnx"), full_check=True)
    v = Variant(name="v0", label="stateful", onnx="v0.onnx", plan=[], inputs=ins, outputs=outs)
    assert [t.state_key for t in v.state_inputs] == [t.state_key for t in v.state_outputs] == ["blk0.acc"]
    save_manifest(Manifest(opset=18, model_class="_Stateful", config={}, forward_params=["hidden_states", "timestep",
                           "state"], constants={}, schedule={}, num_steps=3, steps=[0, 0, 0],
                           weights=WeightsFile(path="weights.bin", bytes=size, tensors=1), variants=[v]),
                  tmp_path / "manifest.json")
    runner = load_onnx(tmp_path / "manifest.json")
    xs = [torch.randn(2, 16, 8) for _ in range(3)]
    for _ in range(2):  # the second generation starts from zero state again
        acc = torch.zeros(2, 8)
        for x, t in zip(xs, (900.0, 500.0, 100.0)):
            ts = torch.full((2,), t)
            with torch.no_grad():
                ref, new = module(x, ts, {"blk0.acc": acc})
            (got,) = runner(hidden_states=x, timestep=ts, return_dict=False)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            acc = new["state"]["blk0.acc"]
        torch.testing.assert_close(runner.state[(0, "blk0")]["acc"], acc, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # cold inductor compiles take ~10-60 s per variant on the 2-core machine
def test_inductor_backend_matches_eager_and_records_compile_seconds():
    model, kw = zoo.pixart()
    eager, ind = (compile_with_reduction(model, SCHED, backend=b) for b in ("eager", "inductor"))
    for t in (900.0, 700.0, 500.0, 300.0):
        k = dict(kw, timestep=torch.full((2,), t), return_dict=False)
        with torch.no_grad():
            torch.testing.assert_close(ind(**k)[0], eager(**k)[0], rtol=1e-4, atol=1e-4)
    assert sorted(ind.compile_seconds) == sorted(["dense", "2/4 sites uniform:0.5 k=8",
                                                  "2/4 sites uniform:0.25 k=12"])
    assert all(s > 0 for s in ind.compile_seconds.values())


def test_inductor_gets_the_merges_as_fusable_products(monkeypatch):
    """The graph handed to inductor writes ToMe's window merge as products and sums that inductor fuses
    with their gathers (regions.pointwise_products); the graph the other backends export keeps one bmm
    per merge (one per window offset where the tensors are large: regions.size_forms). All compute the eager
    output."""
    import ditreduce.backends.inductor as inductor

    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    sched = {"version": 1, "method": "tome", "ratio": 0.5, "scope": "attention+proj"}
    handed = []
    monkeypatch.setattr(inductor.torch, "compile", lambda gm, **_: handed.append(gm) or gm)  # runs it uncompiled
    built, eager = (compile_with_reduction(model, sched, backend=b) for b in ("inductor", "eager"))
    with torch.no_grad():
        ref, got = eager(**kw)[0], built(**kw)[0]
        plain = export_program(eager.variant(eager.last_capture, eager.last_key), kw).module()
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(**kw)[0], ref, rtol=1e-5, atol=1e-5)

    def merges(gm, rows):  # the window merge's [rows, 4] x [4, C] products (ToMe's similarity is a bmm too: kept)
        return sum(n.op == "call_function" and n.target == torch.ops.aten.bmm.default
                   and tuple(n.args[0].meta["val"].shape[-2:]) == (rows, 4) for n in gm.graph.nodes)
    assert merges(handed[0], 9) == merges(handed[0], 1) == 0
    assert merges(plain, 9) == 2 and merges(plain, 1) == 0   # one per self-attention site (small tensors)
    with size_forms(True), torch.no_grad():  # the large-tensor form: one product per window offset
        wide = export_program(eager.variant(eager.last_capture, eager.last_key), kw).module()
        torch.testing.assert_close(wide(**kw)[0], ref, rtol=1e-5, atol=1e-5)
    assert merges(wide, 1) == 2 * 9 and merges(wide, 9) == 0


@pytest.mark.slow  # two inductor compiles per method (~10-30 s each here)
@pytest.mark.parametrize("method", ["coredit", "dito"])
def test_inductor_runs_in_graph_selections_equal_to_eager(method):
    """In-graph methods build constant lattice tables outside the tracer; dynamo cannot enter that, so
    the inductor backend compiles the re-exported ATen graph (it failed with a dynamo error before)."""
    model, kw = zoo.pixart()
    sched = {"version": 1, "method": method, "ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"}]}
    eager, ind = (compile_with_reduction(model, sched, backend=b) for b in ("eager", "inductor"))
    for t in (900.0, 700.0, 500.0, 300.0):
        k = dict(kw, timestep=torch.full((2,), t), return_dict=False)
        with torch.no_grad():
            torch.testing.assert_close(ind(**k)[0], eager(**k)[0], rtol=1e-4, atol=1e-4)
    assert len(ind.compile_seconds) == (2 if method == "coredit" else 3)  # dito: prime, match, reduce
    if method == "dito":
        # a variant fed state another order produced (set_step jumping from the prime step to a reduce step:
        # zeros for the matching it never saw) runs the graph compiled for the run's own order: the state
        # between variants is handed over contiguous, so no stride guard fails and nothing recompiles
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with torch.no_grad():
            for step in (0, 2, 1, 2):
                ind.set_step(step, 4)
                ind(**dict(kw, return_dict=False))
        ind.set_step(None)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow  # AOTInductor compiles C++ (~1 min here)
def test_export_programs_run_and_aotinductor_compiles_a_variant_on_cpu(tmp_path):
    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, SCHED)
    programs = reduced.export_programs(num_steps=4, **kw)
    assert list(programs) == ["v0", "v1", "v2"]
    eager = compile_with_reduction(model, SCHED)
    eager.set_step(1, 4)
    with torch.no_grad():
        ref = eager(**kw)[0]
        torch.testing.assert_close(programs["v1"].module()(**kw)[0], ref, rtol=1e-5, atol=1e-5)
    sdpa = [n for n in programs["v1"].graph.nodes if n.op == "call_function" and "scaled_dot_product" in str(n.target)]
    # self-attention on the 8 kept of 16 tokens, cross-attention untouched (16 queries)
    assert sorted(n.args[0].meta["val"].shape[-2] for n in sdpa) == [8, 8, 16, 16]
    pkg = torch._inductor.aoti_compile_and_package(programs["v1"], package_path=str(tmp_path / "v1.pt2"))
    compiled = torch._inductor.aoti_load_package(pkg)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**kw)[0], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method,scope,large", [("coredit", "attention+cross", False), ("tome", "attention", False),
                                                ("coredit", "block", False), ("todo", "attention", False),
                                                ("tome", "attention", True), ("coredit", "block", True)])
def test_onnxruntime_runs_in_graph_methods_like_eager_and_passes_the_tensorrt_lint(method, scope, large):
    """Also in the forms the region ops take for large tensors (regions.size_forms: ToMe's similarities from
    strided `unfold` views, its merge one product per window offset, dim-0 row gathers)."""
    from ditreduce.backends.lint import lint_model

    model, kw = zoo.build("pixart", grid=(6, 6))
    sched = {"method": method, "ratio": 0.5, "scope": scope}
    eager = compile_with_reduction(model, sched)
    ort = compile_with_reduction(model, sched, backend="onnxruntime")
    with torch.no_grad(), size_forms(large):
        ref, got = eager(**kw, return_dict=False)[0], ort(**kw, return_dict=False)[0]
        dense = model(**kw, return_dict=False)[0]
    assert not torch.allclose(ref, dense, atol=1e-3)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # the lint reads the very ONNX model ONNX Runtime ran
    assert lint_model(ort.last_capture.runners[ort.last_key].proto) == []


def test_inductor_mode_is_validated_and_cuda_graphs_refuse_a_stateful_variant():
    """backend_options.mode is one of torch.compile's modes (anything else: a BackendError naming them); a
    mode that replays CUDA graphs on a CUDA call of a variant that carries state (DiTo) is refused by name
    before anything compiles, while a stateless variant or the CPU goes ahead."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import ditreduce.backends.inductor as inductor
    from ditreduce.backends import BackendError, BackendOptions, check_backend

    with pytest.raises(BackendError, match="backend_options.mode.*allowed fields"):
        check_backend("inductor", {"mode": "fast"})
    opts = check_backend("inductor", {"mode": "reduce-overhead"})[1]
    stateful, stateless = torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph()), \
        torch.fx.GraphModule(torch.nn.Module(), torch.fx.Graph())
    stateful.meta["ditreduce_state"] = {"inputs": {"blk0": {"y": ((1, 4, 8), torch.float32)}}, "outputs": {}}
    with FakeTensorMode():
        on_cuda = {"hidden_states": torch.empty(1, 4, 8, device="cuda")}
    with pytest.raises(BackendError, match="mode='reduce-overhead'.*'dito:0.5'.*mode 'default'"):
        inductor.prepare(stateful, on_cuda, "dito:0.5", opts)
    assert inductor.prepare(stateless, on_cuda, "coredit:0.5", opts).mode == "reduce-overhead"
    assert inductor.prepare(stateful, {"hidden_states": torch.empty(1, 4, 8)}, "dito:0.5", opts).mode == "reduce-overhead"
    assert inductor.prepare(stateful, on_cuda, "dito:0.5", BackendOptions(mode="max-autotune-no-cudagraphs")).mode \
        == "max-autotune-no-cudagraphs"


def test_inductor_mode_reaches_torch_compile(monkeypatch):
    import ditreduce.backends.inductor as inductor

    model, kw = zoo.pixart()
    seen = []
    monkeypatch.setattr(inductor.torch, "compile", lambda gm, **o: seen.append(o["mode"]) or gm)  # runs it uncompiled
    built = compile_with_reduction(model, {"version": 1, "method": "coredit", "ratio": 0.5}, backend="inductor",
                                   backend_options={"mode": "reduce-overhead"})
    with torch.no_grad():
        built(**dict(kw, return_dict=False))
    assert seen == ["reduce-overhead"]
