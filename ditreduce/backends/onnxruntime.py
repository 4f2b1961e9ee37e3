"""onnxruntime: variants run in ONNX Runtime InferenceSessions.

- backend="onnxruntime": each variant the runtime picks is exported (dynamo exporter, opset 18) and run
  in its own session; the runtime keeps the step tracking (ReducedModel).
- load_onnx(manifest.json): a drop-in transformer for a diffusers pipeline that needs no PyTorch model:
  it tracks steps itself, runs the manifest's variant for each step, and carries state tensors
  (`state_out.<key>` outputs of one call feed the `state.<key>` inputs of the next; zeros at a
  generation's start).

Tensors are bound with IO binding on their own device (no host copy on CUDA). Providers: CPU here;
["CUDAExecutionProvider"] or ["TensorrtExecutionProvider", "CUDAExecutionProvider"] where installed.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_unflatten

from . import BackendError
from .manifest import TensorSpec, load_manifest

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


def _get(tree, path):
    for p in path:
        tree = tree[p] if not hasattr(tree, "__dataclass_fields__") or isinstance(tree, dict) else getattr(tree, p)
    return tree


class InProcessVariant:
    """backend="onnxruntime": a variant GraphModule exported to ONNX, called like the GraphModule."""

    def __init__(self, gm, kw: dict, providers=None):
        from .onnx_graph import to_onnx
        from .programs import export_program

        from .programs import with_example_state

        kw = with_example_state(gm, kw)
        ep = export_program(gm, kw)
        proto, ins, outs = to_onnx(ep, kw)
        self.out_spec = ep.call_spec.out_spec
        self.run = OrtVariant(make_session(proto.SerializeToString(), providers), ins, outs)

    def __call__(self, **kw):
        outs = self.run({s.name: _get(kw, s.path) for s in self.run.inputs})
        return tree_unflatten([outs[s.name] for s in self.run.outputs], self.out_spec)


def prepare(gm, kw: dict, label: str, reduced):
    return InProcessVariant(gm, kw, getattr(reduced, "ort_providers", None))


class OnnxTransformer(nn.Module):
    """A diffusers-pipeline transformer that runs an exported manifest in ONNX Runtime."""

    def __init__(self, manifest_path: str | Path, providers: list[str] | None = None):
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        from ..runtime import StepTracker

        self.root = Path(manifest_path).parent
        self.manifest = load_manifest(manifest_path)
        self.providers = providers
        self.config = FrozenDict(self.manifest.config)
        self.tracker = StepTracker()
        self.state: dict[str, torch.Tensor] = {}
        self._variants: dict[str, OrtVariant] = {}
        self._prev_step: int | None = None
        hs = self.manifest.variants[0].inputs[0]
        self._dtype = getattr(torch, hs.dtype)
        self._device = torch.device("cuda" if providers and "CUDAExecutionProvider" in providers else "cpu")
        self.last_variant: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def variant(self, name: str) -> OrtVariant:
        if name not in self._variants:
            v = next(v for v in self.manifest.variants if v.name == name)
            self._variants[name] = OrtVariant(make_session(self.manifest.file(self.root, v.onnx), self.providers), v.inputs, v.outputs)
        return self._variants[name]

    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        self.tracker.explicit = None if step is None else (int(step), num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        if num_steps is not None and num_steps != self.manifest.num_steps:
            raise BackendError(f"the manifest was exported for num_steps={self.manifest.num_steps}, the run has "
                               f"{num_steps}: export again with num_steps={num_steps}")
        self.tracker.reset()
        self.state.clear()
        try:
            yield self
        finally:
            self.tracker.reset()

    def _state_for(self, spec: TensorSpec, device) -> torch.Tensor:
        if spec.state_key not in self.state:
            self.state[spec.state_key] = torch.zeros(spec.shape, dtype=getattr(torch, spec.dtype), device=device)
        return self.state[spec.state_key]

    def forward(self, *args, **kwargs):
        params = self.manifest.forward_params
        if len(args) > len(params):
            raise BackendError(f"{self.manifest.model_class} takes {len(params)} arguments, got {len(args)}")
        kw = dict(zip(params, args), **kwargs)
        return_dict = kw.pop("return_dict", True)
        step = self.tracker.observe(kw.get("timestep"))
        if self._prev_step is None or step < self._prev_step:
            self.state.clear()  # a new generation: state starts from zeros
        self._prev_step = step
        v = self.manifest.variant_for_step(step)
        self.last_variant = v.name
        device = next((t.device for t in kw.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
        feeds = {s.name: self._state_for(s, device) if s.is_state else _get(kw, s.path) for s in v.inputs}
        outs = self.variant(v.name)(feeds)
        self.state.update({s.state_key: outs[s.name] for s in v.state_outputs})
        result = tuple(outs[s.name] for s in v.outputs if not s.is_state)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=result[0])
        return result


def load_onnx(manifest_path: str | Path, providers: list[str] | None = None) -> OnnxTransformer:
    return OnnxTransformer(manifest_path, providers)
