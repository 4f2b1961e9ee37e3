"""tensorrt: variants run as TensorRT engines on one CUDA stream, with state buffers.

- load_tensorrt(engines.json): a diffusers-pipeline transformer over the engines that
  `ditreduce build-engines` wrote (step -> variant map and tensor specs from the ONNX manifest).
- backend="tensorrt": each variant the runtime picks is exported to ONNX, built into an engine in a
  temporary directory, and run the same way.

State tensors (`state.*`) live in persistent device buffers: a variant's state inputs are bound to the
current buffers and its state outputs to fresh ones that become current after the call, so state never
leaves the GPU. Every engine executes on one stream, ordered after the caller's torch stream.
Needs TensorRT and a CUDA GPU; neither can be installed on the development machines (tests skip).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..errors import BackendError
from .exported import ExportedVariant
from .manifest import TensorSpec, load_engine_manifest, manifest_file, onnx_manifest as onnx_manifest_of
from .manifest_runner import ManifestRunner
from .trt_build import require_tensorrt


class TrtVariant:
    """One engine: feeds {name: CUDA tensor} -> {name: CUDA tensor}, executed on `stream`."""

    def __init__(self, trt, plan: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec], stream,
                 refit_onnx: Path | None = None):
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BackendError("TensorRT could not deserialize the engine (built with another TensorRT version?)")
        if refit_onnx is not None:  # weight-stripped plan: weights from the shared ONNX weights file
            refitter = trt.Refitter(self.engine, logger)
            if not trt.OnnxParserRefitter(refitter, logger).refit_from_file(str(refit_onnx)) or \
                    not refitter.refit_cuda_engine():
                raise BackendError(f"refitting the engine from {refit_onnx} failed")
        self.context = self.engine.create_execution_context()
        self.inputs, self.outputs, self.stream = inputs, outputs, stream

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        keep = []
        for spec in self.inputs:
            t = feeds[spec.name].to("cuda").contiguous()
            keep.append(t)
            self.context.set_input_shape(spec.name, tuple(t.shape))
            self.context.set_tensor_address(spec.name, t.data_ptr())
        outs = {}
        for spec in self.outputs:
            o = torch.empty(tuple(self.context.get_tensor_shape(spec.name)), dtype=getattr(torch, spec.dtype),
                            device="cuda")
            self.context.set_tensor_address(spec.name, o.data_ptr())
            outs[spec.name] = o
        self.stream.wait_stream(torch.cuda.current_stream())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed")
        torch.cuda.current_stream().wait_stream(self.stream)
        for t in keep:
            t.record_stream(self.stream)
        return outs


class TrtTransformer(ManifestRunner):
    """A drop-in transformer over the engines of an engine manifest (the run model of ManifestRunner)."""

    def __init__(self, engines_json: str | Path):
        trt = require_tensorrt()
        engines_json = Path(engines_json)
        em = load_engine_manifest(engines_json)
        super().__init__(onnx_manifest_of(engines_json, em))
        self._trt, self.engine_manifest, self.engine_root = trt, em, engines_json.parent
        self._device = torch.device("cuda")
        self._stream = torch.cuda.Stream()
        self._plans = {e.variant: e.plan for e in self.engine_manifest.engines}

    def make_variant(self, v) -> TrtVariant:
        if v.name not in self._plans:
            raise BackendError(f"the engine manifest has no engine for variant {v.name}: build the engines again "
                               "(ditreduce build-engines manifest.json)")
        refit = manifest_file(self.root, v.onnx, "variants[].onnx") if self.engine_manifest.weight_stripped else None
        plan = manifest_file(self.engine_root, self._plans[v.name], "engines[].plan")
        return TrtVariant(self._trt, plan.read_bytes(), v.inputs, v.outputs, self._stream, refit)


def load_tensorrt(engines_json: str | Path) -> TrtTransformer:
    return TrtTransformer(engines_json)


def engine_runner(precision: str = "fp32", workspace_gib: float = 4.0):
    """make_run for ExportedVariant: the exported ONNX graph built into an engine (a temporary dir)."""
    def make_run(proto, ins, outs) -> TrtVariant:
        import onnx

        from .trt_build import build_engine, profile_shapes

        trt = require_tensorrt()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "variant.onnx"
            onnx.save(proto, str(path), save_as_external_data=True, location="variant.weights")
            plan = build_engine(trt, path, precision, {t.name: profile_shapes(t.shape, None) for t in ins},
                                refittable=False, strip_weights=False, workspace_gib=workspace_gib)
        return TrtVariant(trt, plan, ins, outs, torch.cuda.Stream())
    return make_run


def prepare(gm, kw: dict, label: str, options):
    """backend="tensorrt": the variant exported to ONNX (with its example state inputs), built into an engine."""
    return ExportedVariant(gm, kw, engine_runner(options.precision, options.workspace_gib))
