"""`ditreduce check-tensorrt manifest.json`: lint every variant graph against what the TensorRT ONNX
parser accepts, without TensorRT. Rules (each finding names the variant, node, op and rule):

  op-support     every op is in the parser's support matrix (trt_ops.py), default ONNX domain only
  opset          the graph's opset is in the parser's range
  topk-k         TopK's K is a constant (initializer or Constant node), at most 3840, sorted = 1
  scatter        no ScatterND / ScatterElements with a reduction (scatter_add / scatter_reduce / index_put)
  nonzero        no NonZero (its output shape depends on the data)
  static-shape   after shape inference (with data propagation) every input, output and intermediate tensor
                 has constant dims: token counts are static, nothing is data-dependent
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

from .trt_ops import OPSET_RANGE, SUPPORTED, MAX_TOPK


@dataclass(frozen=True)
class Finding:
    variant: str
    node: str
    op: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.variant}: {self.node} ({self.op}) [{self.rule}] {self.message}"


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t
    return out


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _static(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    return t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim)


def _dims(vi: onnx.ValueInfoProto) -> str:
    return "[" + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                           for d in vi.type.tensor_type.shape.dim) + "]"


def _node_rules(variant: str, node: onnx.NodeProto, consts: dict) -> list[Finding]:
    name, op = node.name or node.output[0], node.op_type
    f = []
    if node.domain not in ("", "ai.onnx"):
        f.append(Finding(variant, name, op, "op-support", f"custom domain {node.domain!r}: the parser needs a plugin"))
    elif op not in SUPPORTED:
        f.append(Finding(variant, name, op, "op-support", "not in the TensorRT ONNX parser's support matrix"))
    if op == "TopK":
        k = consts.get(node.input[1]) if len(node.input) > 1 else None
        if k is None:
            f.append(Finding(variant, name, op, "topk-k", "K is computed in the graph; TensorRT needs a constant K"))
        elif int(numpy_helper.to_array(k).reshape(-1)[0]) > MAX_TOPK:
            f.append(Finding(variant, name, op, "topk-k",
                             f"K={int(numpy_helper.to_array(k).reshape(-1)[0])} > {MAX_TOPK}"))
        if _attr(node, "sorted", 1) != 1:
            f.append(Finding(variant, name, op, "topk-k", "sorted=0; TensorRT needs sorted=1"))
    if op in ("ScatterND", "ScatterElements"):
        red = _attr(node, "reduction", b"none")
        red = red.decode() if isinstance(red, bytes) else red
        if red != "none":
            f.append(Finding(variant, name, op, "scatter", f"reduction={red!r}: scatter with accumulation"))
    if op == "NonZero":
        f.append(Finding(variant, name, op, "nonzero", "output shape depends on the data"))
    return f


def lint_model(model: onnx.ModelProto, variant: str = "graph") -> list[Finding]:
    findings = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        findings.append(Finding(variant, "-", "-", "opset", f"opset {opset} outside TensorRT's {OPSET_RANGE}"))
    consts = _constants(model.graph)
    for node in model.graph.node:
        findings += _node_rules(variant, node, consts)
    try:
        g = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except onnx.shape_inference.InferenceError as e:
        first = str(e).strip().splitlines()[0]
        return findings + [Finding(variant, "-", "-", "static-shape", f"ONNX shape inference fails: {first}")]
    produced = {o: n for n in g.node for o in n.output}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.name in consts or _static(vi):
            continue
        node = produced.get(vi.name)
        findings.append(Finding(variant, node.name if node is not None else vi.name,
                                node.op_type if node is not None else "input", "static-shape",
                                f"tensor {vi.name!r} has shape {_dims(vi)}: not constant (data-dependent or dynamic)"))
    typed = {vi.name for vi in list(g.input) + list(g.value_info) + list(g.output)} | set(consts)
    for n in g.node:
        for o in n.output:
            if o and o not in typed:
                findings.append(Finding(variant, n.name or o, n.op_type, "static-shape",
                                        f"tensor {o!r}: shape inference cannot tell its shape"))
    return findings


def lint_manifest(manifest_path: str | Path, verify: bool = True) -> list[Finding]:
    from .manifest import load_manifest

    manifest_path = Path(manifest_path)
    m = load_manifest(manifest_path, verify=verify)
    findings = []
    for v in m.variants:
        model = onnx.load(str(m.file(manifest_path.parent, v.onnx)), load_external_data=False)
        findings += lint_model(model, v.name)
    return findings
