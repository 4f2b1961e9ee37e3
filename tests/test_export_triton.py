"""`ditreduce export --triton`: the CLI writes the manifest and a Triton model repository whose config.pbtxt
files parse against Triton's ModelConfig protobuf schema (tritonclient's model_config_pb2) and agree with
the ONNX graphs; the weights file is one copy on disk (hard links)."""
import importlib.util
import os
from pathlib import Path

import onnx
import pytest

from ditreduce.backends.manifest import load_manifest


def _model_config_pb2():
    """Triton's model_config_pb2 from the tritonclient wheel, loaded by path: the package's grpc/__init__ needs
    grpcio, which the generated protobuf module itself does not."""
    pytest.importorskip("tritonclient", reason="tritonclient provides Triton's model_config protobuf schema")
    import importlib.metadata as md

    path = Path(md.distribution("tritonclient").locate_file("tritonclient/grpc/model_config_pb2.py"))
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from ditreduce.cli import main

    out = tmp_path_factory.mktemp("triton") / "out"
    sched = out.parent / "sched.yaml"
    sched.write_text("ratio: 0.5\nrules:\n  - steps: {start: 0, stop: 1}\n    method: none\n")
    assert main(["export", "zoo:pixart_example", str(sched), str(out), "--steps", "3", "--triton"]) == 0
    return out


def test_config_pbtxt_files_parse_against_tritons_schema_and_match_the_graphs(exported):
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    m = load_manifest(exported / "manifest.json")
    repo = exported / "triton"
    assert sorted(p.name for p in repo.iterdir()) == ["ditreduce_steps", "ditreduce_v0", "ditreduce_v1"]
    for v in m.variants:
        cfg = text_format.Parse((repo / f"ditreduce_{v.name}" / "config.pbtxt").read_text(), pb2.ModelConfig())
        assert cfg.name == f"ditreduce_{v.name}" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
        graph = onnx.load(str(repo / f"ditreduce_{v.name}" / "1" / "model.onnx"), load_external_data=False)
        assert [i.name for i in cfg.input] == [i.name for i in graph.graph.input]
        assert [o.name for o in cfg.output] == [o.name for o in graph.graph.output]
        assert [list(i.dims) for i in cfg.input] == [t.shape for t in v.inputs]
        assert {pb2.DataType.Name(i.data_type) for i in cfg.input} == {"TYPE_FP32"}
        assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
        weights = repo / f"ditreduce_{v.name}" / "1" / "weights.bin"
        assert os.path.samefile(weights, exported / "weights.bin")  # a link, not a copy
    loop = text_format.Parse((repo / "ditreduce_steps" / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert loop.backend == "python" and loop.input[0].name == "step"
    assert {i.name for i in loop.input[1:]} == {t.name for t in m.variants[0].inputs}
    assert (repo / "ditreduce_steps" / "1" / "model.py").exists()
    compile((repo / "ditreduce_steps" / "1" / "model.py").read_text(), "model.py", "exec")


def test_schema_rejects_a_misspelt_field():
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nplatfrom: "tensorrt_plan"\n', pb2.ModelConfig())
