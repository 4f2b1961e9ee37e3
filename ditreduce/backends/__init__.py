"""Backends: how one variant graph runs. The runtime keeps the run model (step clock, state, run plan)
and picks the variant; a backend turns a variant GraphModule into the callable that runs it (once per
variant). See base.py for the boundary.

    eager        the GraphModule itself
    inductor     torch.compile(fullgraph=True) per variant; first-call (compile) seconds recorded
    aotinductor  the variant compiled ahead of time by AOTInductor (.pt2 package) and run by its C++ runner
    onnxruntime  the variant exported to ONNX (dynamo exporter, opset 18) and run by an InferenceSession
    tensorrt     the variant exported to ONNX, built into a TensorRT engine, run on one CUDA stream

Export to disk (ONNX per variant + manifest.json + one shared weights file) is `export.py`; one
ExportedProgram per variant (Torch-TensorRT, AOTInductor) is `programs.py`.

`load_onnx` (onnxruntime.py) and `load_tensorrt` (tensorrt.py) are importable from here; their modules load
on first access, so importing this package imports neither onnx / onnxruntime nor TensorRT.
"""
from __future__ import annotations

import importlib

from ..errors import BackendError
from .base import BACKENDS, INDUCTOR_MODES, BackendOptions, check_backend, prepare_variant, variant_label

_LAZY = {"load_onnx": ("onnxruntime", "onnx"), "load_tensorrt": ("tensorrt", "onnx")}  # name: (module, extra)

__all__ = ["BACKENDS", "INDUCTOR_MODES", "BackendError", "BackendOptions", "check_backend", "load_onnx",
           "load_tensorrt", "prepare_variant", "variant_label"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = _LAZY[name]
    try:
        return getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"ditreduce.backends.{name} needs the {e.name} package: pip install "
                                  f"'ditreduce[{extra}]'", name=e.name) from e


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
