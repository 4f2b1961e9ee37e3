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
"""
from __future__ import annotations

from ..errors import BackendError
from .base import BACKENDS, INDUCTOR_MODES, BackendOptions, check_backend, prepare_variant, variant_label

__all__ = ["BACKENDS", "INDUCTOR_MODES", "BackendError", "BackendOptions", "check_backend", "prepare_variant", "variant_label"]
