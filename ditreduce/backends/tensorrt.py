"""tensorrt: variants run as TensorRT engines on one CUDA stream, with state buffers.

- load_tensorrt(engines.json): a diffusers-pipeline transformer over the engines that
  tools/build_engines.py wrote (step -> variant map and tensor specs from the ONNX manifest).
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

from . import BackendError
from .manifest import TensorSpec, load_engine_manifest, load_manifest, manifest_file, onnx_manifest as onnx_manifest_of


def require_tensorrt():
    from .trt_build import import_tensorrt

    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise BackendError("backend tensorrt needs a CUDA GPU (torch.cuda.is_available() is False); on CPU use "
                           "backend='onnxruntime' or lint the export with `ditreduce check-tensorrt`")
    return trt


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


class TrtTransformer(torch.nn.Module):
    """A drop-in transformer over the engines of an engine manifest (step tracking like OnnxTransformer)."""

    def __init__(self, engines_json: str | Path):
        super().__init__()
        from .onnxruntime import OnnxTransformer

        trt = require_tensorrt()
        engines_json = Path(engines_json)
        em = load_engine_manifest(engines_json)
        onnx_manifest = onnx_manifest_of(engines_json, em)
        self._onnx = OnnxTransformer(onnx_manifest)  # step tracking, state store, argument binding
        self.config = self._onnx.config
        stream = torch.cuda.Stream()
        specs = {v.name: v for v in load_manifest(onnx_manifest).variants}
        self._onnx._variants = {
            e.variant: TrtVariant(trt, manifest_file(engines_json.parent, e.plan).read_bytes(), specs[e.variant].inputs,
                                  specs[e.variant].outputs, stream,
                                  manifest_file(onnx_manifest.parent, specs[e.variant].onnx) if em.weight_stripped else None)
            for e in em.engines}

    @property
    def dtype(self):
        return self._onnx.dtype

    @property
    def device(self):
        return torch.device("cuda")

    def set_step(self, step, num_steps=None):
        self._onnx.set_step(step, num_steps)

    def generation(self, num_steps=None):
        return self._onnx.generation(num_steps)

    def forward(self, *args, **kwargs):
        return self._onnx(*args, **kwargs)


def load_tensorrt(engines_json: str | Path) -> TrtTransformer:
    return TrtTransformer(engines_json)


class InProcessEngine:
    """backend="tensorrt": a variant GraphModule -> ONNX -> engine (temporary dir), called like the module."""

    def __init__(self, gm, kw: dict, label: str, precision: str = "fp32"):
        from .onnx_graph import to_onnx
        from .onnxruntime import _get
        from .programs import export_program
        from .trt_build import build_engine, profile_shapes

        trt = require_tensorrt()
        ep = export_program(gm, kw)
        proto, ins, outs = to_onnx(ep, kw)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "variant.onnx"
            import onnx

            onnx.save(proto, str(path), save_as_external_data=True, location="variant.weights")
            plan = build_engine(trt, path, precision, {t.name: profile_shapes(t.shape, None) for t in ins},
                                refittable=False, strip_weights=False)
        self.label, self.out_spec, self._get = label, ep.call_spec.out_spec, _get
        self.run = TrtVariant(trt, plan, ins, outs, torch.cuda.Stream())

    def __call__(self, **kw):
        from torch.utils._pytree import tree_unflatten

        outs = self.run({s.name: self._get(kw, s.path) for s in self.run.inputs})
        return tree_unflatten([outs[s.name] for s in self.run.outputs], self.out_spec)


def prepare(gm, kw: dict, label: str, reduced):
    return InProcessEngine(gm, kw, label, getattr(reduced, "trt_precision", "fp32"))
