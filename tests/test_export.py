"""reduced.export: one ONNX graph per variant (onnx.checker, TensorRT lint), manifest round trip and step
map, one shared weights file (file sizes), state tensors as graph inputs/outputs, ONNX Runtime parity."""
import json
import os

import onnx
import pytest
import torch

import zoo
from ditreduce import compile_with_reduction, load_schedule
from ditreduce.backends import BackendError
from ditreduce.backends.lint import lint_manifest
from ditreduce.backends.manifest import Manifest, load_manifest
from ditreduce.backends.onnxruntime import load_onnx

# three variants over 4 steps: dense, ratio 0.5, ratio 0.25
SCHED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"},
                                 {"steps": {"start": 2}, "ratio": 0.25}]}
TIMESTEPS = (900.0, 700.0, 500.0, 300.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, SCHED)
    out = tmp_path_factory.mktemp("export")
    with torch.no_grad():
        manifest = reduced.export(out, num_steps=4, **kw)
    return model, kw, reduced, out, manifest


def test_manifest_round_trips_and_maps_steps_to_the_runtime_variants(exported):
    model, kw, reduced, out, manifest = exported
    assert load_manifest(out / "manifest.json") == manifest
    assert Manifest.model_validate(json.loads((out / "manifest.json").read_text())) == manifest
    assert manifest.steps == [0, 1, 2, 2] and [v.name for v in manifest.variants] == ["v0", "v1", "v2"]
    assert manifest.variants[0].plan == [] and {p.k for p in manifest.variants[1].plan} == {8}
    assert manifest.config["num_layers"] == 2 and manifest.constants == {"return_dict": False}
    v = manifest.variants[1]
    assert [(t.name, t.dtype, t.shape) for t in v.inputs] == [
        ("hidden_states", "float32", [2, 4, 8, 8]), ("encoder_hidden_states", "float32", [2, 5, 12]),
        ("timestep", "float32", [2])]
    assert [(t.name, t.shape) for t in v.outputs] == [("out.0", [2, 8, 8, 8])]
    assert manifest.schedule["rules"][1]["ratio"] == 0.25
    assert load_schedule(manifest.schedule) == reduced.schedule
    for step, t in enumerate(TIMESTEPS):  # the runtime picks the same variant per step as the manifest says
        with torch.no_grad():
            reduced(**dict(kw, timestep=torch.full((2,), t)))
        plan = {(c.site, c.k) for c in manifest.variant_for_step(step).plan}
        assert plan == {(s.name, c.k) for s, c in zip(reduced.last_capture.sites, reduced.last_key) if c is not None}


def test_graphs_pass_onnx_checker_and_tensorrt_lint(exported):
    *_, out, manifest = exported
    for v in manifest.variants:
        onnx.checker.check_model(str(out / v.onnx), full_check=True)
        m = onnx.load(str(out / v.onnx), load_external_data=False)
        assert m.opset_import[0].version >= 18
        assert [i.name for i in m.graph.input] == [t.name for t in v.inputs]
    assert lint_manifest(out / "manifest.json") == []


def test_variants_share_one_weights_file(exported):
    model, kw, reduced, out, manifest = exported
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = os.path.getsize(out / "weights.bin")
    assert weights == manifest.weights.bytes
    assert weights < 1.1 * param_bytes  # one copy, not one per variant (3 variants)
    for v in manifest.variants:
        m = onnx.load(str(out / v.onnx), load_external_data=False)
        ext = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        locations = {e.value for t in ext for e in t.external_data if e.key == "location"}
        assert locations == {"weights.bin"}
        referenced = sum(int(e.value) for t in ext for e in t.external_data if e.key == "length")
        assert referenced > 0.8 * param_bytes  # every graph reads (almost) all weights from the shared file
        inline = sum(len(t.raw_data) for t in m.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)
        assert inline < 0.2 * param_bytes


def test_onnx_manifest_runs_every_step_like_eager(exported):
    model, kw, reduced, out, manifest = exported
    eager = compile_with_reduction(model, SCHED)
    onnx_model = load_onnx(out / "manifest.json")
    for t in TIMESTEPS:
        k = dict(kw, timestep=torch.full((2,), t))
        with torch.no_grad():
            ref = eager(**k)[0]
        got = onnx_model(**k)[0]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert onnx_model.last_variant == "v2"
    with onnx_model.generation(num_steps=4):
        out = onnx_model(**dict(kw, return_dict=True, timestep=torch.full((2,), TIMESTEPS[0])))
    assert type(out).__name__ == "Transformer2DModelOutput" and onnx_model.last_variant == "v0"


def test_export_says_what_it_needs(exported):
    model, kw, *_ = exported
    reduced = compile_with_reduction(model, SCHED)
    with pytest.raises(BackendError, match="example keyword arguments"):
        reduced.export("unused", num_steps=4)
    with pytest.raises(BackendError, match="num_steps"):
        reduced.export_programs(**kw)
    with pytest.raises(BackendError, match="outside the exported run"):
        exported[4].variant_for_step(4)
    with pytest.raises(BackendError, match="no manifest"):
        load_manifest("nowhere/manifest.json")
    with pytest.raises(BackendError, match="exported for float32\\[2, 4, 8, 8\\]"):
        load_onnx(exported[3] / "manifest.json")(**dict(kw, hidden_states=kw["hidden_states"][:1]))
