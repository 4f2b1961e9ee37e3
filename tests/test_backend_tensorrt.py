"""TensorRT: the optimisation-profile rules and the messages given without TensorRT run everywhere; building
and running engines, and Torch-TensorRT on export_programs(), need TensorRT and a CUDA GPU and skip here."""
import importlib.util
from pathlib import Path

import pytest
import torch

import zoo
from ditreduce import compile_with_reduction
from ditreduce.backends import BackendError
from ditreduce.backends.trt_build import build_engines, profile_shapes
from ditreduce.cli import main

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt_gpu = pytest.mark.skipif(not (HAVE_TRT and torch.cuda.is_available()),
                                   reason="needs TensorRT and a CUDA GPU (neither can be installed on this machine)")
SCHED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"}]}


def test_static_graphs_build_one_point_profiles_and_reject_batch_ranges():
    assert profile_shapes([2, 4, 8, 8], None) == [[2, 4, 8, 8]] * 3
    assert profile_shapes([2, 4, 8, 8], (2, 2, 2)) == [[2, 4, 8, 8]] * 3
    with pytest.raises(BackendError, match="static batch of 2"):
        profile_shapes([2, 4, 8, 8], (1, 2, 8))
    assert profile_shapes(["batch", 4, 8, 8], (1, 2, 8)) == [[1, 4, 8, 8], [2, 4, 8, 8], [8, 4, 8, 8]]
    with pytest.raises(BackendError, match="--batch MIN,OPT,MAX"):
        profile_shapes(["batch", 4, 8, 8], None)


@pytest.mark.skipif(HAVE_TRT and torch.cuda.is_available(), reason="checks the message given without TensorRT or a GPU")
def test_build_engines_without_tensorrt_or_gpu_says_what_to_do(tmp_path, capsys):
    why = "TensorRT is not installed.*check-tensorrt" if not HAVE_TRT else "needs a CUDA GPU.*check-tensorrt"
    with pytest.raises(BackendError, match=why):
        build_engines(tmp_path / "manifest.json", tmp_path / "engines")
    # the installed command: the same named error, one line, exit 2
    assert main(["build-engines", str(tmp_path / "manifest.json"), "--out", str(tmp_path / "engines")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditreduce: error: BackendError: ") and "check-tensorrt" in err and "\n" not in err


def test_build_engines_arguments(monkeypatch):
    import ditreduce.backends.trt_build as trt_build

    calls = []
    monkeypatch.setattr(trt_build, "build_engines", lambda *a: calls.append(a) or Path(a[1]) / "engines.json")
    assert main(["build-engines", "m/manifest.json"]) == 0
    assert main(["build-engines", "m/manifest.json", "--precision", "bf16", "--out", "e", "--batch", "1,2,4",
                 "--no-refit", "--strip-weights"]) == 0
    assert calls == [("m/manifest.json", "engines", "fp16", None, True, False),
                     ("m/manifest.json", "e", "bf16", (1, 2, 4), False, True)]
    for bad in (["--batch", "2,1,4"], ["--batch", "1,2"], ["--batch", "a,b,c"], ["--precision", "int8"]):
        with pytest.raises(SystemExit) as e:
            main(["build-engines", "m/manifest.json", *bad])
        assert e.value.code == 2


@pytest.fixture
def exported(tmp_path):
    model, kw = zoo.pixart()
    kw = dict(kw, return_dict=False)
    with torch.no_grad():
        compile_with_reduction(model, SCHED).export(tmp_path / "onnx", num_steps=3, **kw)
    return model, kw, tmp_path


@needs_trt_gpu
@pytest.mark.parametrize("strip", [False, True])
def test_engines_run_every_step_like_eager(exported, strip):
    from ditreduce.backends.tensorrt import load_tensorrt

    model, kw, tmp = exported
    path = build_engines(tmp / "onnx" / "manifest.json", tmp / "engines", "fp32", strip_weights=strip)
    trt_model = load_tensorrt(path)
    eager = compile_with_reduction(model, SCHED)
    for t in (900.0, 600.0, 300.0):
        k = dict(kw, timestep=torch.full((2,), t))
        with torch.no_grad():
            ref = eager(**k)[0]
        got = trt_model(**{n: v.cuda() if isinstance(v, torch.Tensor) else v for n, v in k.items()})[0]
        torch.testing.assert_close(got.cpu(), ref, rtol=1e-3, atol=1e-3)


@needs_trt_gpu
def test_tensorrt_backend_matches_eager():
    model, kw = zoo.pixart()
    model = model.cuda()
    kw = {n: v.cuda() for n, v in kw.items()}
    eager, trt = (compile_with_reduction(model, "uniform-50", backend=b) for b in ("eager", "tensorrt"))
    with torch.no_grad():
        torch.testing.assert_close(trt(**kw, return_dict=False)[0], eager(**kw, return_dict=False)[0],
                                   rtol=1e-3, atol=1e-3)


@needs_trt_gpu
def test_torch_tensorrt_compiles_every_exported_program():
    torch_tensorrt = pytest.importorskip("torch_tensorrt", reason="Torch-TensorRT is not installed")
    model, kw = zoo.pixart()
    model = model.cuda()
    kw = dict({n: v.cuda() for n, v in kw.items()}, return_dict=False)
    reduced = compile_with_reduction(model, SCHED)
    for name, ep in reduced.export_programs(num_steps=3, **kw).items():
        trt_gm = torch_tensorrt.dynamo.compile(ep, arg_inputs=(), kwarg_inputs=kw, min_block_size=1)
        with torch.no_grad():
            torch.testing.assert_close(trt_gm(**kw)[0], ep.module()(**kw)[0], rtol=1e-3, atol=1e-3)
