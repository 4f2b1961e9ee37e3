"""inductor: each variant graph compiled once with torch.compile(fullgraph=True, mode=backend_options.mode).

The variant is first re-exported to plain ATen (backends.programs.export_program: its regions, and
the in-graph selections of CoReDiT / ToMe / DiTo with their constant lattice tables, trace into gathers,
TopK and one sdpa), and dynamo compiles that graph: it cannot trace the selection functions themselves
(their constant tables are built outside the tracer, which dynamo refuses to enter). fullgraph=True
makes a graph break inside a variant an error instead of a silent split; the step tracker stays outside
(in ReducedModel.forward), so it never breaks a compiled graph. The export and compile happen on the
variant's first call, whose wall time (export + compile + one run) ReducedModel.compile_seconds lists
under the variant's label. A variant whose text length is read per sample at run time (a mask
index of the text) is compiled with dynamo's capture of data-dependent output shapes, so that index stays
in the compiled graph and the text length stays a run-time size there.
"""
from __future__ import annotations

import contextlib
import time

import torch

from ..errors import BackendError
from ..passes.site import RUN_TIME_TEXT
from ..regions import pointwise_products
from .programs import export_program


class CompiledVariant:
    def __init__(self, gm: torch.fx.GraphModule, label: str, mode: str = "default"):
        self.gm, self.label, self.mode = gm, label, mode
        self.compile_seconds: float | None = None   # export + compile + first run
        self.fn = None

    def __call__(self, **kw):
        with self._run_time_shapes():
            if self.fn is not None:
                return self.fn(**kw)
            t0 = time.perf_counter()
            with pointwise_products():   # the window merge fused with its gather (regions.pointwise_products)
                aten = export_program(self.gm, kw).module()
            self.fn = torch.compile(aten, fullgraph=True, dynamic=False, backend="inductor", mode=self.mode)
            out = self.fn(**kw)
            self.compile_seconds = time.perf_counter() - t0
            return out

    def _run_time_shapes(self):
        """dynamo's capture of data-dependent output shapes, for a variant with text of run-time length."""
        if not self.gm.meta.get(RUN_TIME_TEXT):
            return contextlib.nullcontext()
        return torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")   # torch.compile modes that replay CUDA graphs


def prepare(gm, kw: dict, label: str, options) -> CompiledVariant:
    if options.mode in CUDA_GRAPH_MODES and gm.meta.get("ditreduce_state") and _on_cuda(kw):
        raise BackendError(
            f"backend_options.mode={options.mode!r} replays each variant as a CUDA graph, and variant {label!r} "
            "carries method state from one call to the next (DiTo's matching), which CUDA-graph replay does not "
            "support here (on torch 2.11 / an H200 the call fails inside dynamo); for a stateful schedule use "
            "mode 'default' or 'max-autotune-no-cudagraphs', or a stateless method (coredit, tome, ...)")
    return CompiledVariant(gm, label, options.mode)


def _on_cuda(kw: dict) -> bool:
    return any(isinstance(v, torch.Tensor) and v.device.type == "cuda" for v in kw.values())
