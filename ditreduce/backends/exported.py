"""The one shape of the in-process runners (backend="onnxruntime" and "tensorrt"): a variant GraphModule
exported to ONNX once, with its example state (a stateful variant's state tensors are graph inputs and
outputs, so the engine's I/O list carries them), then called like the GraphModule."""
from __future__ import annotations

from torch.utils._pytree import tree_unflatten

from .base import feed_value
from .onnx_graph import to_onnx
from .programs import export_program, require_static_token_counts, with_example_state


class ExportedVariant:
    """An in-process runner: the variant exported to ONNX once (with its example state, so a stateful
    variant's state inputs are graph inputs), then `feeds {name: tensor} -> {name: tensor}` by `make_run`."""

    def __init__(self, gm, kw: dict, make_run):
        require_static_token_counts(gm)
        kw = with_example_state(gm, kw)
        ep = export_program(gm, kw)
        proto, ins, outs = to_onnx(ep, kw)
        self.proto = proto          # the ONNX model the runner runs (tests lint this one)
        self.out_spec = ep.call_spec.out_spec
        self.run = make_run(proto, ins, outs)

    def __call__(self, **kw):
        outs = self.run({s.name: feed_value(kw, s.path) for s in self.run.inputs})
        return tree_unflatten([outs[s.name] for s in self.run.outputs], self.out_spec)
