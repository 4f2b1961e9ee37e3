"""One ExportedProgram per variant of a run: what torch_tensorrt.dynamo.compile, AOTInductor
(torch._inductor.aoti_compile_and_package) and the ONNX exporter take.

A variant GraphModule is re-exported with torch.export; its attention regions trace into plain ATen
(gather + one sdpa + gathers). `drop_noop_squeezes` then removes `aten.squeeze.dim` on dims whose size
is not 1 (a no-op in PyTorch; diffusers' PixArt does `hidden_states.squeeze(1)` on a [B, N, C] tensor)
because ONNX Squeeze rejects such an axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..passes.capture import bind_call, quiet_export_warnings
from ..passes.site import RUN_TIME_TEXT
from ..errors import BackendError
from .base import variant_label

_SQUEEZES = (torch.ops.aten.squeeze.dim, torch.ops.aten.squeeze.dims)


@dataclass
class RunVariants:
    """The distinct variants of an N-step run: their keys, GraphModules, and the variant index per step."""
    keys: list
    graphs: list
    steps: list[int]
    sites: list

    @property
    def names(self) -> list[str]:
        return [f"v{i}" for i in range(len(self.keys))]

    @property
    def labels(self) -> list[str]:
        return [variant_label(k) for k in self.keys]


def run_variants(reduced, num_steps: int | None, kw: dict) -> RunVariants:
    if not kw:
        raise BackendError("export needs example keyword arguments of the model call (the tensors fix the "
                           "static shapes of every variant), e.g. export(out, num_steps=20, hidden_states=x, ...)")
    num_steps = num_steps or reduced.num_steps()
    if not num_steps:
        raise BackendError("export needs num_steps (the step -> variant map covers a run of N steps): pass "
                           "num_steps=N or set `num_steps:` in the schedule")
    cap = reduced.analysis(kw)
    plan = reduced.plan(cap, int(num_steps))
    return RunVariants(list(plan.keys), [reduced.variant(cap, k) for k in plan.keys], list(plan.per_step), cap.sites)


def drop_noop_squeezes(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    graph = ep.graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _SQUEEZES:
            continue
        x = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else ()
        dims = [dims] if isinstance(dims, int) else list(dims)
        shape = x.meta["val"].shape
        if dims and all(shape[d] != 1 for d in dims):
            node.replace_all_uses_with(x)
            graph.erase_node(node)
    ep.graph_module.recompile()
    return ep


def with_example_state(gm: torch.fx.GraphModule, kw: dict) -> dict:
    """kw plus zero tensors under `state` for a stateful variant's state inputs (the shapes it takes)."""
    spec = (getattr(gm, "meta", None) or {}).get("ditreduce_state")
    if not spec or not spec["inputs"] or "state" in kw:
        return kw
    dev = next((t.device for t in kw.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
    return dict(kw, state={site: {name: torch.zeros(shape, dtype=dtype, device=dev) for name, (shape, dtype) in names.items()}
                           for site, names in spec["inputs"].items()})


def require_static_token_counts(gm: torch.nn.Module, target: str = "ONNX / TensorRT") -> None:
    """BackendError where the model attends to text whose length is read per sample at run time."""
    modules = (getattr(gm, "meta", None) or {}).get(RUN_TIME_TEXT)
    if modules:
        raise BackendError(
            f"{target} needs static token counts, but {', '.join(sorted(set(modules)))} attend to text whose length "
            "is read per sample at run time (e.g. `ctx[i][mask[i]]`): run this model with backend='eager' or "
            "'inductor', or pad the text to a fixed length and pass the padding as an attention mask")


def export_program(gm: torch.nn.Module, kw: dict) -> torch.export.ExportedProgram:
    """The variant as an ExportedProgram with the call's static shapes (inference: no_grad); a stateful
    variant gets zero example state when kw has none."""
    kw = with_example_state(gm, kw)
    with torch.no_grad(), quiet_export_warnings():
        ep = torch.export.export(gm, (), dict(kw), strict=False)
    return drop_noop_squeezes(ep)


def export_programs(reduced, num_steps: int | None, example_kwargs: dict) -> dict[str, torch.export.ExportedProgram]:
    """{variant name: ExportedProgram} for every distinct variant of an N-step run (names v0, v1, ...)."""
    kw = bind_call(reduced.model, (), example_kwargs) if example_kwargs else {}
    run = run_variants(reduced, num_steps, kw)
    return {name: export_program(gm, kw) for name, gm in zip(run.names, run.graphs)}
