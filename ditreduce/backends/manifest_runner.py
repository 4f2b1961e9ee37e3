"""ManifestRunner: a drop-in transformer over an exported manifest (ONNX Runtime sessions or TensorRT
engines), with the runtime's run model and run loop (run_state.run_call): the step clock in both timestep directions, CFG as
two calls with one state slot per half, state carried between steps (`state_out.<site>.<name>` of one
call feeds `state.<site>.<name>` of the next), and the manifest's step -> variant map as its run plan.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import BackendError
from ..run_state import ChosenVariant, Generations, RunLengthWarning, run_call
from .base import feed_value
from .manifest import load_manifest


def _split_state(specs) -> dict:
    """{site: {name: (shape, dtype)}} of a variant's state TensorSpecs (`state[_out].<site>.<name>`)."""
    out: dict = {}
    for s in specs:
        site, name = s.state_key.rsplit(".", 1)
        out.setdefault(site, {})[name] = (tuple(s.shape), getattr(torch, s.dtype))
    return out


class ManifestRunner(nn.Module):
    """Subclasses say how one manifest variant runs: make_variant(variant) -> feeds {name: tensor} -> outputs."""

    def __init__(self, manifest_path: str | Path):
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        self.root = Path(manifest_path).parent
        self.manifest = load_manifest(manifest_path)
        self.config = FrozenDict(self.manifest.config)
        self.generations = Generations()
        self._variants: dict = {}
        self._lock = threading.Lock()
        hs = self.manifest.variants[0].inputs[0]
        self._dtype = getattr(torch, hs.dtype)
        self._device = torch.device("cpu")
        self.last_variant: str | None = None

    def make_variant(self, v):
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def variant(self, name: str):
        with self._lock:
            if name not in self._variants:
                self._variants[name] = self.make_variant(next(v for v in self.manifest.variants if v.name == name))
            return self._variants[name]

    @property
    def state(self) -> dict:
        """{(slot, site): {name: tensor}}: the state the latest generation holds."""
        return self.generations.last_state()

    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        if num_steps is not None and num_steps != self.manifest.num_steps:
            raise BackendError(f"the manifest was exported for num_steps={self.manifest.num_steps}, set_step says "
                               f"{num_steps}: export again with num_steps={num_steps}")
        self.generations.set_step(step, num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        if num_steps is not None and num_steps != self.manifest.num_steps:
            raise BackendError(f"the manifest was exported for num_steps={self.manifest.num_steps}, the run has "
                               f"{num_steps}: export again with num_steps={num_steps}")
        with self.generations.open(self.manifest.num_steps) as gen:
            yield self
        if num_steps is None:   # a length the caller gave is theirs to cut short
            gen.check_length(self.manifest.num_steps, f"the export's num_steps={self.manifest.num_steps}")

    def forward(self, *args, **kwargs):
        params = self.manifest.forward_params
        if len(args) > len(params):
            raise BackendError(f"{self.manifest.model_class} takes {len(params)} arguments, got {len(args)}")
        kw = dict(zip(params, args), **kwargs)
        # return_dict as the call says; unsaid, a diffusers model's output dataclass, another model's bare output
        said = "return_dict" in kw
        return_dict = kw.pop("return_dict") if said else "return_dict" in params
        device = next((t.device for t in kw.values() if isinstance(t, torch.Tensor)), torch.device("cpu"))
        result = run_call(self.generations, kw, lambda gen, call: self._choose(kw, gen, call), device)
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=result[0])
        return result if said or len(result) > 1 else result[0]

    def _choose(self, kw: dict, gen, call) -> ChosenVariant:
        """The manifest's variant for this call's step, fed from the call's inputs and the carried state."""
        step_dependent = len(set(self.manifest.steps)) > 1
        if call.step is None and step_dependent:
            raise BackendError("the exported run has step-dependent variants but the call has no timestep ditreduce "
                               "recognises (an argument named timestep / t / sigma ..., or the only floating 0-/1-d "
                               "tensor input): pass it, or call set_step(i) before each call")
        if call.step == 0 and len(gen.history) == 1 and gen.learned_num_steps not in (None, self.manifest.num_steps):
            warnings.warn(f"the previous generation ran {gen.learned_num_steps} steps but the export's plan is for "
                          f"{self.manifest.num_steps}: its variants were placed for {self.manifest.num_steps} steps. "
                          f"Export again with num_steps={gen.learned_num_steps}", RunLengthWarning, stacklevel=5)
        v = self.manifest.variant_for_step(call.step or 0)
        self.last_variant = v.name

        def run(held):
            feeds = {}
            for s in v.inputs:
                if s.is_state:
                    site, name = s.state_key.rsplit(".", 1)
                    feeds[s.name] = held[site][name]
                else:
                    feeds[s.name] = feed_value(kw, s.path)
            outs = self.variant(v.name)(feeds)
            state_out: dict = {}
            for s in v.state_outputs:
                site, name = s.state_key.rsplit(".", 1)
                state_out.setdefault(site, {})[name] = outs[s.name]
            return tuple(outs[s.name] for s in v.outputs if not s.is_state), state_out

        return ChosenVariant(v.name, _split_state(v.state_inputs), step_dependent, run)
