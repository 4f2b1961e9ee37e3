"""The backend boundary: the backend names, their options, the variant labels, and and how a runner reads a
call's tensor by its manifest path. The one shape of in-process runners is exported.ExportedVariant.

A backend module (eager.py, inductor.py, aotinductor.py, onnxruntime.py, tensorrt.py) has one entry point,
`prepare(gm, kw, label, options) -> callable(**kw)`, made once per (analysis, variant key). The step
clock, state and variant choice stay in the runner that calls it (runtime.ReducedModel).
"""
from __future__ import annotations

import importlib
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import BackendError

BACKENDS = ("eager", "inductor", "aotinductor", "onnxruntime", "tensorrt")
InductorMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
INDUCTOR_MODES = get_args(InductorMode)   # torch.compile's modes


class BackendOptions(BaseModel):
    """backend_options= of compile_with_reduction (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    providers: list[str] | None = None                       # onnxruntime: execution providers (default CPU)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"      # tensorrt: engine precision
    workspace_gib: float = Field(4.0, gt=0)                  # tensorrt: builder workspace limit
    mode: InductorMode = "default"
    # inductor: torch.compile's mode; on CUDA, reduce-overhead replays each variant as a CUDA graph


def check_backend(name: str, options: dict | BackendOptions | None = None) -> tuple[str, BackendOptions]:
    """(name, options) validated; a bad name or option is a BackendError naming the allowed values."""
    if name not in BACKENDS:
        raise BackendError(f"backend={name!r} is not a backend; allowed: {', '.join(BACKENDS)}")
    try:
        opts = options if isinstance(options, BackendOptions) else BackendOptions(**(options or {}))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(map(str, err["loc"]))
        raise BackendError(f"backend_options.{field}: {err['msg']}; allowed fields: "
                           f"{', '.join(BackendOptions.model_fields)}") from None
    if name == "tensorrt":
        from .trt_build import require_tensorrt

        require_tensorrt()
    return name, opts


def prepare_variant(backend: str, gm, key: tuple, kw: dict, options: BackendOptions):
    """The callable that runs one variant (called as fn(**kw)), made once per (analysis, variant key)."""
    module = importlib.import_module(f"..{backend}", __name__)
    return module.prepare(gm, kw, variant_label(key), options)


def variant_label(key: tuple) -> str:
    """A readable name of a variant key: `dense`, or its reduced sites' distinct method:ratio and k."""
    cfgs = [c for c in key if c is not None]
    if not cfgs:
        return "dense"
    parts = sorted({f"{c.method}:{c.ratio:g}" + (f" {dict(c.params)['phase']}" if "phase" in dict(c.params) else "")
                    for c in cfgs})  # DiTo's prime / match / reduce variants share method and ratio
    ks = ",".join(str(k) for k in sorted({c.k for c in cfgs}))
    return f"{len(cfgs)}/{len(key)} sites " + ",".join(parts) + f" k={ks}"


def feed_value(kw: dict, path: list):
    """The call's leaf at `path` (keys of dicts / attributes of dataclasses), as the manifest names it."""
    tree = kw
    for p in path:
        tree = tree[p] if isinstance(tree, dict) or not hasattr(tree, "__dataclass_fields__") else getattr(tree, p)
    return tree
