"""onnxruntime: variants run in ONNX Runtime InferenceSessions.

- backend="onnxruntime": each variant the runtime picks is exported (dynamo exporter, opset 18) and run
  in its own session; the runtime keeps the run model (ReducedModel).
- load_onnx(manifest.json): a drop-in transformer for a diffusers pipeline that needs no PyTorch model,
  with the same run model as the runtime (manifest_runner.ManifestRunner: step clock, CFG state slots,
  the manifest's step -> variant map).

Tensors are bound with IO binding on their own device (no host copy on CUDA). Providers (backend_options=
{"providers": [...]}): CPU here; ["CUDAExecutionProvider"] or ["TensorrtExecutionProvider",
"CUDAExecutionProvider"] where installed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import BackendError
from .exported import ExportedVariant
from .manifest import TensorSpec
from .manifest_runner import ManifestRunner

NUMPY = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
         "int32": np.int32, "bool": np.bool_, "uint8": np.uint8, "int8": np.int8}


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendError("backend onnxruntime needs the onnxruntime package: pip install 'ditreduce[onnx]'") from e
    return onnxruntime


def make_session(model: str | Path | bytes, providers: list[str] | None = None):
    ort = _ort()
    providers = providers or ["CPUExecutionProvider"]
    missing = [p for p in providers if p not in ort.get_available_providers()]
    if missing:
        raise BackendError(f"ONNX Runtime execution providers {missing} are not available in this install; "
                           f"available: {ort.get_available_providers()} (onnxruntime-gpu brings CUDA / TensorRT)")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=providers)


def _device(t: torch.Tensor) -> tuple[str, int]:
    return t.device.type, t.device.index or 0


class OrtVariant:
    """One variant graph in a session: feeds {name: tensor} -> {name: tensor} (all outputs)."""

    def __init__(self, session, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.session, self.inputs, self.outputs = session, inputs, outputs

    def _check(self, spec: TensorSpec, t) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise BackendError(f"input {spec.name!r}: expected a tensor, got {type(t).__name__}")
        if list(t.shape) != spec.shape or str(t.dtype).removeprefix("torch.") != spec.dtype:
            raise BackendError(f"input {spec.name!r}: the graph was exported for {spec.dtype}{spec.shape}, got "
                               f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}; shapes are static: export "
                               f"again with example arguments of this shape")
        if spec.dtype not in NUMPY:
            raise BackendError(f"input {spec.name!r}: dtype {spec.dtype} cannot be bound from Python; "
                               f"export in float16 or float32")
        return t.contiguous()

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        binding = self.session.io_binding()
        keep = []
        device = None
        for spec in self.inputs:
            if spec.name not in feeds:
                raise BackendError(f"the variant needs input {spec.name!r}; got {sorted(feeds)}")
            t = self._check(spec, feeds[spec.name])
            keep.append(t)
            device = device or t.device
            binding.bind_input(spec.name, *_device(t), NUMPY[spec.dtype], list(t.shape), t.data_ptr())
        device = device or torch.device("cpu")
        outs = {}
        for spec in self.outputs:
            o = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=device)
            binding.bind_output(spec.name, *_device(o), NUMPY[spec.dtype], spec.shape, o.data_ptr())
            outs[spec.name] = o
        self.session.run_with_iobinding(binding)
        return outs


def prepare(gm, kw: dict, label: str, options):
    """backend="onnxruntime": the variant exported to ONNX and run in its own session."""
    return ExportedVariant(gm, kw, lambda proto, ins, outs: OrtVariant(
        make_session(proto.SerializeToString(), options.providers), ins, outs))


class OnnxTransformer(ManifestRunner):
    """A diffusers-pipeline transformer that runs an exported manifest in ONNX Runtime."""

    def __init__(self, manifest_path: str | Path, providers: list[str] | None = None):
        super().__init__(manifest_path)
        self.providers = providers
        self._device = torch.device("cuda" if providers and "CUDAExecutionProvider" in providers else "cpu")

    def make_variant(self, v) -> OrtVariant:
        return OrtVariant(make_session(self.manifest.file(self.root, v.onnx, 'variants[].onnx'), self.providers), v.inputs, v.outputs)


def load_onnx(manifest_path: str | Path, providers: list[str] | None = None) -> OnnxTransformer:
    return OnnxTransformer(manifest_path, providers)
