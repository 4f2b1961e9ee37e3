"""`ditreduce check-tensorrt`: hand-made ONNX graphs that TensorRT's parser accepts pass; each rule fails the
graph that breaks it (and names the rule); the CLI exits 1 on findings and 0 on a clean manifest."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ditreduce.backends.lint import lint_model
from ditreduce.backends.trt_ops import SUPPORTED


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return m


def _x(name="x", shape=(2, 64, 8), dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _topk(k_value=None, k_from_input=False, sorted_=1):
    scores = helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0)
    inits = [numpy_helper.from_array(np.array([2], np.int64), "axes")]
    inputs = [_x()]
    if k_from_input:
        inputs.append(_x("k", (1,), TensorProto.INT64))
    else:
        inits.append(numpy_helper.from_array(np.array([k_value], np.int64), "k"))
    topk = helper.make_node("TopK", ["s", "k"], ["v", "i"], axis=-1, sorted=sorted_)
    n_out = 64 if k_from_input else k_value
    gather = helper.make_node("GatherElements", ["s", "i"], ["y"], axis=1)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, min(n_out, 64)])]
    return _model([scores, topk, gather], inputs, outs, inits)


def _scatter(op, reduction):
    data, upd = _x("d", (2, 64)), _x("u", (2, 8))
    idx = numpy_helper.from_array(np.tile(np.arange(8, dtype=np.int64), (2, 1)), "idx")
    if op == "ScatterND":
        idx = numpy_helper.from_array(np.stack(np.meshgrid(np.arange(2), np.arange(8), indexing="ij"), -1)
                                      .astype(np.int64), "idx")
    kw = {"axis": 1} if op == "ScatterElements" else {}
    node = helper.make_node(op, ["d", "idx", "u"], ["y"], reduction=reduction, **kw)
    return _model([node], [data, upd], [_x("y", (2, 64))], [idx])


def test_a_region_like_graph_passes():
    m = _topk(k_value=16)
    assert lint_model(m) == []
    assert lint_model(_scatter("ScatterElements", "none")) == []  # plain scatter is allowed


@pytest.mark.parametrize("model, rule", [
    (lambda: _topk(k_value=4096), "topk-k"),
    (lambda: _topk(k_from_input=True), "topk-k"),
    (lambda: _topk(k_value=16, sorted_=0), "topk-k"),
    (lambda: _scatter("ScatterElements", "add"), "scatter"),
    (lambda: _scatter("ScatterND", "add"), "scatter"),
    (lambda: _model([helper.make_node("NonZero", ["x"], ["y"])], [_x()], [_x("y", (3, "n"), TensorProto.INT64)]),
     "nonzero"),
    (lambda: _model([helper.make_node("Unique", ["x"], ["y"])], [_x()], [_x("y", ("n",))]), "op-support"),
    (lambda: _model([helper.make_node("Relu", ["x"], ["y"])], [_x(shape=(2, "tokens", 8))], [_x("y", (2, "tokens", 8))]),
     "static-shape"),
    (lambda: _model([helper.make_node("Relu", ["x"], ["y"], domain="com.example")], [_x()], [_x("y")]), "op-support"),
    (lambda: _model([helper.make_node("Relu", ["x"], ["y"])], [_x()], [_x("y")], opset=21), "opset"),
])
def test_each_rule_fails_the_graph_that_breaks_it(model, rule):
    findings = lint_model(model(), "v7")
    assert rule in {f.rule for f in findings}, findings
    assert all(str(f).startswith("v7: ") for f in findings)


def test_nonzero_output_shape_is_also_flagged_data_dependent():
    m = _model([helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Transpose", ["nz"], ["y"])],
               [_x()], [_x("y", ("n", 3), TensorProto.INT64)])
    rules = {f.rule for f in lint_model(m)}
    assert {"nonzero", "static-shape"} <= rules


def test_support_list_has_the_ops_dit_graphs_use_and_not_the_unsupported_ones():
    assert {"MatMul", "Softmax", "LayerNormalization", "GatherElements", "TopK", "Gelu"} <= SUPPORTED
    assert not {"Unique", "SequenceAt", "StringNormalizer"} & SUPPORTED


def test_cli_exit_codes(tmp_path, capsys):
    import json

    from ditreduce.cli import main

    for name, model in (("good", _topk(k_value=16)), ("bad", _topk(k_value=4096))):
        d = tmp_path / name
        d.mkdir()
        onnx.save(model, str(d / "v0.onnx"))
        spec = {"name": "x", "dtype": "float32", "shape": [2, 64, 8], "path": ["x"]}
        man = {"opset": 18, "model_class": "M", "config": {}, "forward_params": ["x"], "constants": {},
               "schedule": {}, "num_steps": 1, "steps": [0],
               "weights": {"path": "weights.bin", "bytes": 0, "tensors": 0},
               "variants": [{"name": "v0", "label": "dense", "onnx": "v0.onnx", "plan": [], "inputs": [spec],
                             "outputs": [dict(spec, name="y", path=[0])]}]}
        (d / "manifest.json").write_text(json.dumps(man))
    # hand-written manifests carry no sha256: --no-verify (paths and structure are still checked)
    assert main(["check-tensorrt", "--no-verify", str(tmp_path / "good" / "manifest.json")]) == 0
    assert main(["check-tensorrt", "--no-verify", str(tmp_path / "bad" / "manifest.json")]) == 1
    assert "K=4096 > 3840" in capsys.readouterr().out
