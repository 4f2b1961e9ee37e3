"""The runtime: ReducedModel analyses lazily (the pass pipeline, once per input signature), keeps the
run model (run_state: step clock, CFG state slots, per-thread generations) and runs the variant the
run plan (schedules/plan.py) gives the call's step, on the chosen backend."""
from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .backends import check_backend, prepare_variant, variant_label
from .errors import ScheduleError
from .passes import capture as capture_pass
from .passes.inputs import lattice_signature, timestep_value
from .passes.pipeline import Analysis, analyze
from .passes.rewrite import rewrite
from .regions import outside_inference_mode
from .run_state import Generations, latent_of
from .schedules import Schedule, load_schedule
from .schedules.lower import NumStepsUnknown
from .schedules.plan import MAX_VARIANTS, RunPlan, is_step_dependent



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

    def __init__(self, model: nn.Module, schedule: Schedule, backend: str = "eager",
                 backend_options: dict | None = None, max_variants: int = MAX_VARIANTS):
        super().__init__()
        self.model = model
        self._schedule = schedule
        self.backend, self.backend_options = check_backend(backend, backend_options)
        self.max_variants = max_variants
        self.captures: dict[tuple, Analysis] = {}   # input signature -> Analysis
        self.last_capture: Analysis | None = None
        self.generations = Generations()
        self.last_key: tuple | None = None
        self._lock = threading.RLock()              # analysis, variant and runner building
        self.on_state = None  # optional callback(call: run_state.Call, state_out) (DiTo calibration reads matchings)

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, schedule: Schedule) -> None:
        """A new schedule keeps the analyses (they do not depend on it) and drops their run plans."""
        with self._lock:
            self._schedule = schedule
            for cap in self.captures.values():
                cap.plans.clear()

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
        """Fix the step for the following calls of this thread (None: back to counting timesteps)."""
        self.generations.set_step(step, num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        """One generation of this thread: its own step clock and state; `num_steps` serves step_fraction
        rules and bounds the steps. Nested generations leave the outer one as it was."""
        with self.generations.open(num_steps) as gen:
            yield self
        gen.warn_if_stuck(is_step_dependent(self.schedule))

    @property
    def state(self) -> dict:
        """{(slot, site): {name: tensor}}: the method state the latest generation holds."""
        return self.generations.last_state()

    def num_steps(self) -> int | None:
        return self.generations.current.resolved_num_steps(self.schedule.num_steps, self.schedule.needs_num_steps)

    # --- analysis and run ----------------------------------------------------------------------------
    def capture(self, *args, **kwargs) -> Analysis:
        kw = capture_pass.bind_call(self.model, args, kwargs)
        return self.analysis(kw)

    def analysis(self, kw: dict) -> Analysis:
        """The pass pipeline's Analysis for this input signature (run once per signature, under a lock)."""
        sig = _signature(kw)
        cap = self.captures.get(sig)
        if cap is None:
            with self._lock:
                cap = self.captures.get(sig)
                if cap is None:
                    with outside_inference_mode():
                        cap = self.captures[sig] = analyze(self.model, kw, self.schedule)
        self.last_capture = cap
        return cap

    def plan(self, cap: Analysis, num_steps: int | None = None) -> RunPlan:
        """The run plan of this analysis for num_steps (None: open-ended), computed once."""
        plan = cap.plans.get(num_steps)
        if plan is None:
            with self._lock:
                plan = cap.plan(self.schedule, num_steps, self.max_variants)
        return plan

    def variant(self, cap: Analysis, key: tuple) -> torch.fx.GraphModule:
        gm = cap.variants.get(key)
        if gm is None:
            with self._lock:
                gm = cap.variants.get(key)
                if gm is None:
                    with outside_inference_mode():
                        gm = rewrite(cap.graph, cap.sites, key) if any(c is not None for c in key) else cap.graph
                    cap.variants[key] = gm
        return gm

    def runner(self, cap: Analysis, key: tuple, kw: dict):
        """The callable that runs a variant: the backend's lowering of its GraphModule, made once per variant."""
        run = cap.runners.get(key)
        if run is None:
            gm = self.variant(cap, key)
            with self._lock:
                run = cap.runners.get(key)
                if run is None:
                    with outside_inference_mode():
                        run = cap.runners[key] = prepare_variant(self.backend, gm, key, kw, self.backend_options)
        return run

    @property
    def compile_seconds(self) -> dict[str, float]:
        """Variant label -> first-call seconds (export + compile + one run) of the inductor backend."""
        return {variant_label(key): run.compile_seconds for cap in self.captures.values()
                for key, run in cap.runners.items() if getattr(run, "compile_seconds", None) is not None}

    def _key(self, plan: RunPlan, step: int | None) -> tuple:
        try:
            with self._lock:  # an open plan grows as steps are asked for
                return plan.key(step)
        except NumStepsUnknown as e:
            if str(e) == "step":
                raise ScheduleError(
                    f"the schedule has step rules (or a stateful method), but {type(self.model).__name__} was called "
                    "without a timestep ditreduce recognises (an argument named timestep / timesteps / t / sigma ..., "
                    "or the only floating 0-/1-d tensor input): call set_step(i, num_steps) before each call") from None
            raise ScheduleError(
                "the schedule has step_fraction rules (or negative step indices), so it needs the number of "
                "denoising steps: set `num_steps:` in the schedule, call set_step(i, num_steps), or wrap the "
                "run in `with model.generation(num_steps=N):`") from None

    def forward(self, *args, **kwargs):
        kw = capture_pass.bind_call(self.model, args, kwargs)
        cap = self.analysis(kw)
        gen, call = self.generations.advance(timestep_value(kw), latent_of(kw))
        num_steps = self.num_steps()   # of `gen`, this thread's current generation
        plan = self.plan(cap, num_steps)
        key = self.last_key = self._key(plan, call.step)
        call.variant = variant_label(key)
        gen.warn_if_stuck(plan.step_dependent)
        spec = self.variant(cap, key).meta.get("ditreduce_state")
        if spec is None:
            return self.runner(cap, key, kw)(**kw)
        if spec["inputs"]:
            kw = dict(kw, state=gen.state.feed(spec["inputs"], call.step, call.slot, self.device,
                                               zeros_if_missing=gen.explicit is not None or call.step == 0))
        out, extra = self.runner(cap, key, kw)(**kw)
        gen.state.update(call.slot, extra["state"])
        if self.on_state is not None:
            self.on_state(call, extra["state"])
        return out

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

        if self.last_capture is None:
            raise RuntimeError("ReducedModel captures lazily on its first call: call it once (or capture(**kwargs)) "
                               "before report()")
        return build_report(self, self.last_capture, num_steps or self.num_steps())


def compile_with_reduction(model: nn.Module, schedule="uniform-50", backend: str = "eager",
                           backend_options: dict | None = None, max_variants: int = MAX_VARIANTS,
                           **example_kwargs) -> ReducedModel:
    """Wrap `model` so its self/joint attention runs on fewer tokens, as `schedule` says.

    schedule: a YAML path, a preset name, a dict or a Schedule. backend: eager | inductor | aotinductor |
    onnxruntime | tensorrt (how each variant runs); backend_options: {"providers": [...]} (onnxruntime), {"precision":
    "fp16", "workspace_gib": 8} (tensorrt). max_variants: more distinct variants in a run is a
    ScheduleError. Capture is lazy (first call); pass example keyword arguments to capture now.
    """
    if isinstance(model, ReducedModel):
        raise TypeError("model is already a ReducedModel")
    reduced = ReducedModel(model, load_schedule(schedule), backend, backend_options, max_variants)
    if example_kwargs:
        reduced.capture(**example_kwargs)
    return reduced
