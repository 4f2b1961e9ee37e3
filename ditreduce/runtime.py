"""The runtime: ReducedModel captures lazily, keeps one capture per input signature, tracks the
denoising step and runs the variant graph the schedule gives for that step."""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .backends import check_backend, prepare_variant
from .passes import capture as capture_pass
from .passes.inputs import lattice_signature, timestep_value
from .passes.layout import infer_layout, run_propagation
from .passes.scope import plan_scopes
from .passes.match_attention import match_attention
from .passes.rewrite import rewrite
from .schedules import Schedule, ScheduleError, load_schedule
from .schedules.lower import NumStepsUnknown, check_reduces_something, plan_key
from .methods.dito import StateError, phased_keys, uses_state


class StepTracker:
    """Maps calls to denoising steps. Within a generation the timestep decreases; equal timesteps
    (CFG as two calls per step) stay on one step; a timestep that goes up starts a new generation."""

    def __init__(self):
        self.reset()
        self.learned_num_steps: int | None = None

    def reset(self):
        self.prev: float | None = None
        self.step = -1
        self.explicit: tuple[int, int | None] | None = None

    def observe(self, timestep) -> int | None:
        """The step of this call; None when there is no timestep to count (only schedules with step rules
        need one: they raise a ScheduleError that names set_step)."""
        if self.explicit is not None:
            return self.explicit[0]
        if timestep is None:
            return None
        v = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
        if self.prev is None or v > self.prev:
            if self.prev is not None:
                self.learned_num_steps = self.step + 1
            self.step = 0
        elif v < self.prev:
            self.step += 1
        self.prev = v
        return self.step


@dataclass
class Capture:
    graph: torch.fx.GraphModule
    sites: list
    notes: list
    unmatched: dict
    labels: dict = field(default_factory=dict)    # node name -> axis label (the scope pass reads them)
    variants: dict = field(default_factory=dict)  # plan key -> rewritten GraphModule
    runners: dict = field(default_factory=dict)   # plan key -> the backend's callable for that variant


def _signature(kw: dict) -> tuple:
    leaves, spec = tree_flatten(kw)
    parts = []
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(("T", tuple(leaf.shape), leaf.dtype, leaf.device.type))
        else:
            parts.append(("V", repr(leaf)))
    return (str(spec), tuple(parts), lattice_signature(kw))


class ReducedModel(nn.Module):
    """A drop-in replacement of a DiT whose attention runs on fewer tokens, per a schedule."""

    def __init__(self, model: nn.Module, schedule: Schedule, backend: str = "eager"):
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.backend = check_backend(backend)
        self.compile_seconds: dict[str, float] = {}  # variant label -> first-call seconds (inductor compile)
        self.tracker = StepTracker()
        self._captures: dict[tuple, Capture] = {}
        self._last: Capture | None = None
        self._num_steps_ctx: int | None = None
        self.last_key: tuple | None = None
        # stateful methods (DiTo): {(slot, site): {name: tensor}}; slot = the call's index within its step
        # (two-pass CFG: uncond and cond keep separate state); cleared at every new generation
        self.state: dict[tuple, dict[str, torch.Tensor]] = {}
        self._state_pos: tuple[int, int] | None = None   # (step, slot) of the last call
        self.on_state = None  # optional callback(step, slot, state_out) (DiTo calibration reads matchings)

    # --- what a diffusers pipeline reads from its transformer --------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    # --- step control ------------------------------------------------------------------------------
    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Fix the step for the following calls (None: back to counting timesteps)."""
        self.tracker.explicit = None if step is None else (int(step), num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        """One generation: resets step counting on entry; `num_steps` serves step_fraction rules."""
        self.tracker.reset()
        self._num_steps_ctx = num_steps
        self.reset_state()
        try:
            yield self
        finally:
            self._num_steps_ctx = None
            self.tracker.reset()

    def num_steps(self) -> int | None:
        if self.tracker.explicit is not None and self.tracker.explicit[1] is not None:
            return self.tracker.explicit[1]
        return self._num_steps_ctx or self.schedule.num_steps or self.tracker.learned_num_steps

    # --- capture and run ---------------------------------------------------------------------------
    def capture(self, *args, **kwargs) -> Capture:
        kw = capture_pass.bind_call(self.model, args, kwargs)
        return self._capture_for(kw)

    def _capture_for(self, kw: dict) -> Capture:
        sig = _signature(kw)
        cap = self._captures.get(sig)
        if cap is None:
            gm = capture_pass.capture(self.model, kw)
            matched = match_attention(gm, self.model)
            in_ch = getattr(getattr(self.model, "config", None), "in_channels", None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                seeds = infer_layout(gm, matched.sites, kw, in_ch, self.schedule.layout)
            for w in caught:
                warnings.warn(w.message, stacklevel=4)
            check_reduces_something(self.schedule, matched.sites, matched.unmatched_modules)
            labels, _ = run_propagation(gm, seeds)
            plan_scopes(gm, labels, matched.sites)
            cap = Capture(gm, matched.sites, seeds.notes, matched.unmatched_modules,
                          {n.name: lab for n, lab in labels.items() if isinstance(lab, tuple)})
            self._captures[sig] = cap
        self._last = cap
        return cap

    def variant(self, cap: Capture, key: tuple) -> torch.fx.GraphModule:
        gm = cap.variants.get(key)
        if gm is None:
            gm = rewrite(cap.graph, cap.sites, key, cap.labels) if any(c is not None for c in key) else cap.graph
            cap.variants[key] = gm
        return gm

    def reset_state(self) -> None:
        self.state.clear()
        self._state_pos = None

    def _step_key(self, cap: Capture, step: int) -> tuple:
        if not uses_state(self.schedule):
            return plan_key(self.schedule, cap.sites, step, self.num_steps())
        return phased_keys(self.schedule, cap.sites, self.num_steps(), step)[step]

    def _slot(self, step: int) -> int:
        """The call's state slot; a step lower than the last one starts a new generation (state cleared)."""
        if step is None:  # no timestep and no step rules: nothing stateful can run (dito needs steps)
            return 0
        prev = self._state_pos
        if prev is None or step < prev[0]:
            self.state.clear()
            slot = 0
        elif step == prev[0] and self.tracker.explicit is None:
            slot = prev[1] + 1
        else:
            slot = 0
        self._state_pos = (step, slot)
        return slot

    def _state_feed(self, spec: dict, step: int, slot: int) -> dict:
        """The variant's state inputs from the store, shape-checked. Missing state is a StateError, except
        under set_step (benchmarks jump to a step): there it is zeros, as the ONNX runner starts a generation."""
        feed = {}
        for site, names in spec["inputs"].items():
            held = self.state.get((slot, site), {})
            feed[site] = {}
            for name, (shape, dtype) in names.items():
                t = held.get(name)
                if t is None:
                    if self.tracker.explicit is None:
                        raise StateError(
                            f"step {step}: the variant of site {site} needs state {name!r} that no earlier step of "
                            f"this generation produced (slot {slot}); DiTo state starts at its prime step, so run "
                            "the generation from its first step (or use set_step, which feeds zeros)")
                    t = torch.zeros(shape, dtype=dtype, device=self.device)
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise StateError(
                        f"step {step}: state {site}.{name} is {t.dtype}{list(t.shape)} but this variant takes "
                        f"{dtype}{list(shape)}: the batch size or resolution changed inside a generation; start a "
                        "new generation (`with model.generation():`, or a timestep that goes up)")
                feed[site][name] = t
        return feed

    def forward(self, *args, **kwargs):
        kw = capture_pass.bind_call(self.model, args, kwargs)
        cap = self._capture_for(kw)
        step = self.tracker.observe(timestep_value(kw))
        try:
            key = self._step_key(cap, step)
        except NumStepsUnknown as e:
            if str(e) == "step":
                raise ScheduleError(
                    f"the schedule has step rules, but {type(self.model).__name__} was called without a timestep "
                    "ditreduce recognises (an argument named timestep / timesteps / t / sigma ..., or the only "
                    "floating 0-/1-d tensor input): call set_step(i, num_steps) before each call") from None
            raise ScheduleError(
                "the schedule has step_fraction rules (or negative step indices), so it needs the number of "
                "denoising steps: set `num_steps:` in the schedule, call set_step(i, num_steps), or wrap the "
                "run in `with model.generation(num_steps=N):`") from None
        self.last_key = key
        slot = self._slot(step)
        spec = self.variant(cap, key).meta.get("ditreduce_state")
        if spec is None:
            return self.runner(cap, key, kw)(**kw)
        if spec["inputs"]:
            kw = dict(kw, state=self._state_feed(spec, step, slot))
        out, extra = self.runner(cap, key, kw)(**kw)
        for site, tensors in extra["state"].items():
            self.state[(slot, site)] = dict(tensors)
        if self.on_state is not None:
            self.on_state(step, slot, extra["state"])
        return out

    def runner(self, cap: Capture, key: tuple, kw: dict):
        """The callable that runs a variant: the backend's lowering of its GraphModule, made once per variant."""
        run = cap.runners.get(key)
        if run is None:
            run = cap.runners[key] = prepare_variant(self.backend, self, self.variant(cap, key), key, kw)
        return run

    def export(self, out_dir, num_steps: int | None = None, **example_kwargs):
        """One ONNX graph per variant of an N-step run + manifest.json + one shared weights file."""
        from .backends.export import export_onnx

        return export_onnx(self, out_dir, num_steps, example_kwargs)

    def export_programs(self, num_steps: int | None = None, **example_kwargs) -> dict:
        """{variant name: torch.export.ExportedProgram} (Torch-TensorRT, AOTInductor)."""
        from .backends.programs import export_programs

        return export_programs(self, num_steps, example_kwargs)

    def report(self, num_steps: int | None = None):
        from .report import build_report

        if self._last is None:
            raise RuntimeError("ReducedModel captures lazily on its first call: call it once (or capture(**kwargs)) "
                               "before report()")
        return build_report(self, self._last, num_steps or self.num_steps())


def compile_with_reduction(model: nn.Module, schedule="uniform-50", backend: str = "eager",
                           **example_kwargs) -> ReducedModel:
    """Wrap `model` so its self/joint attention runs on fewer tokens, as `schedule` says.

    schedule: a YAML path, a preset name, a dict or a Schedule. backend: eager | inductor | onnxruntime |
    tensorrt (how each variant runs). Capture is lazy (first call); pass example keyword arguments to
    capture now.
    """
    if isinstance(model, ReducedModel):
        raise TypeError("model is already a ReducedModel")
    reduced = ReducedModel(model, load_schedule(schedule), backend)
    if example_kwargs:
        reduced.capture(**example_kwargs)
    return reduced
