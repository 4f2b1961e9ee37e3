"""One variant ExportedProgram -> one ONNX graph (dynamo exporter, opset 18), with its tensors named
by where they sit in the call: `hidden_states`, `added_cond_kwargs.resolution`; outputs `out.0` (tuple
output) or `out.sample` (return_dict); anything under a `state` key is the input `state.<site>.<name>` or
the output `state_out.<site>.<name>`."""
from __future__ import annotations

import contextlib
import logging

import onnx
import torch
from torch.export.graph_signature import OutputKind
from torch.utils._pytree import tree_flatten_with_path, tree_unflatten

from ..errors import BackendError
from ..passes.capture import quiet_export_warnings
from .manifest import STATE_OUT_PREFIX, STATE_PREFIX, TensorSpec

OPSET = 18


def _key(entry) -> str | int:
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    return str(entry)


def leaf_name(path: list, prefix: str = "") -> str:
    parts = [str(p) for p in path]
    if "state" in parts:  # wherever the state dict sits in the call / output
        head = STATE_OUT_PREFIX if prefix else STATE_PREFIX
        return head + ".".join(parts[parts.index("state") + 1:])
    return prefix + ".".join(parts)


def tensor_leaves(tree) -> list[tuple[list, torch.Tensor | object]]:
    """(path, leaf) of every leaf of a call's arguments or outputs, in pytree order."""
    leaves, _ = tree_flatten_with_path(plain_mappings(tree))
    return [([_key(e) for e in path], leaf) for path, leaf in leaves]


def plain_mappings(tree):
    """The tree with every dict subclass as a plain dict of the same items in the same order. diffusers'
    output dataclasses (BaseOutput, e.g. Transformer2DModelOutput) are dict subclasses registered as pytree
    nodes without key paths; as dicts their leaves are named by field (`out.sample`) in the same order."""
    if isinstance(tree, dict):
        return {k: plain_mappings(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(plain_mappings(v) for v in tree)
    return tree


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def spec_of(path: list, t: torch.Tensor, prefix: str = "") -> TensorSpec:
    return TensorSpec(name=leaf_name(path, prefix), dtype=dtype_name(t.dtype), shape=list(t.shape), path=path)


# ops whose folded output is bigger than their inputs: folding them would write e.g. a region's gather
# index expanded to [B, H, k, D] int64 into the graph (MBs per site and variant) instead of one Expand
_NO_FOLD = frozenset({"Expand", "Tile", "ConstantOfShape"})


def _should_fold(node) -> bool | None:
    return False if node.op_type in _NO_FOLD else None


def example_outputs(ep: torch.export.ExportedProgram):
    """The program's user outputs as fake tensors (shapes, dtypes) in the call's output structure."""
    out = next(n for n in ep.graph.nodes if n.op == "output")
    vals = [n.meta["val"] if isinstance(n, torch.fx.Node) else n
            for n, spec in zip(out.args[0], ep.graph_signature.output_specs) if spec.kind == OutputKind.USER_OUTPUT]
    return tree_unflatten(vals, ep.call_spec.out_spec)


# the ONNX exporter's notice, once per op, that torchvision's ops (nms, roi_align, ...) have no converter
# without torchvision: about the exporter's op table, not the graph being exported
_EXPORTER_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"
_TORCHVISION_MISSING = "torchvision is not installed"


def _not_torchvision_missing(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_TORCHVISION_MISSING)


@contextlib.contextmanager
def quiet_onnx_exporter():
    """Hide, during one torch.onnx.export, its "torchvision is not installed" lines and the torch-internal
    warnings of quiet_export_warnings; everything else the exporter logs or warns is shown."""
    logger = logging.getLogger(_EXPORTER_REGISTRY_LOGGER)
    logger.addFilter(_not_torchvision_missing)
    try:
        with quiet_export_warnings():
            yield
    finally:
        logger.removeFilter(_not_torchvision_missing)


def to_onnx(ep: torch.export.ExportedProgram, kw: dict, optimize: bool = True
            ) -> tuple[onnx.ModelProto, list[TensorSpec], list[TensorSpec]]:
    """The ONNX graph of a variant and its input / output tensor specs, in graph order."""
    import onnxscript.optimizer

    with torch.no_grad(), quiet_onnx_exporter():
        prog = torch.onnx.export(ep, (), kwargs=dict(kw), dynamo=True, opset_version=OPSET, optimize=False,
                                 verbose=False)
    if optimize:
        onnxscript.optimizer.optimize_ir(prog.model, should_fold=_should_fold)
    example_out = example_outputs(ep)
    ins = [spec_of(p, t) for p, t in tensor_leaves(kw) if isinstance(t, torch.Tensor)]
    outs = [spec_of(p, t, "out.") for p, t in tensor_leaves(example_out) if isinstance(t, torch.Tensor)]
    graph = prog.model.graph
    if len(graph.inputs) != len(ins) or len(graph.outputs) != len(outs):
        raise BackendError(f"the ONNX graph has {len(graph.inputs)} inputs / {len(graph.outputs)} outputs but the "
                           f"call has {len(ins)} tensor arguments / {len(outs)} tensor outputs: a tensor argument "
                           f"unused by the model was dropped; pass only the arguments the model reads")
    for value, spec in zip(list(graph.inputs) + list(graph.outputs), ins + outs):
        value.name = spec.name
    return strip_debug_info(prog.model_proto), ins, outs


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node stack traces / FX names: they are most of a small graph's bytes."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.ClearField("doc_string")
    for t in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del t.metadata_props[:]
    return model
