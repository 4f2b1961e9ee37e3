"""The runtime: ReducedModel analyses lazily (the pass pipeline, once per input signature), keeps the
run model (run_state: step clock, CFG state slots, per-thread generations) and runs the variant the
run plan (schedules/plan.py) gives the call's step, on the chosen backend."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .backends import check_backend, prepare_variant, variant_label
from .errors import NotAModelError, ScheduleError, UnsupportedModelError
from .passes import capture as capture_pass
from .passes.inputs import lattice_signature
from .passes.pipeline import Analysis, analyze
from .passes.rewrite import rewrite
from .regions import outside_inference_mode
from .run_state import ChosenVariant, Generations, run_call
from .schedules import Schedule, load_schedule, schedule_yaml
from .schedules.lower import NumStepsUnknown
from .schedules.plan import MAX_VARIANTS, RunPlan, is_step_dependent



SCHEDULE_FILE = "ditreduce_schedule.yaml"   # written beside the weights by save_pretrained


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
        check_wrappable(model)
        self.model = model
        self._schedule = schedule
        self.backend, self.backend_options = check_backend(backend, backend_options)
        self.max_variants = max_variants
        self._init_run_state()
        self._register_state_dict_hook(_state_dict_as_the_model_s)
        self._register_load_state_dict_pre_hook(_load_state_dict_of_the_model, with_module=True)

    RUN_STATE = ("captures", "last_capture", "generations", "last_key", "_lock", "on_state")   # _init_run_state's

    def _init_run_state(self) -> None:
        """What a ReducedModel derives from its model and schedule, and its run state: rebuilt lazily, never
        pickled or copied (a copy, a pickle round trip or a weights change analyses again on its next call)."""
        self.captures: dict[tuple, Analysis] = {}   # input signature -> Analysis
        self.last_capture: Analysis | None = None
        self.generations = Generations()
        self.last_key: tuple | None = None
        self._lock = threading.RLock()              # analysis, variant and runner building
        self.on_state = None  # optional callback(call: run_state.Call, state_out) (DiTo calibration reads matchings)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self.RUN_STATE}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._init_run_state()

    def drop_analyses(self) -> None:
        """Forget every capture, variant and runner (the weights, dtype or device changed): the next call
        captures again from the model as it is now."""
        with self._lock:
            self.captures.clear()
            self.last_capture = None

    def _apply(self, fn, *args, **kwargs):
        """.to() / .cuda() / .half() / .float(): the captured graphs hold the old tensors, so they go."""
        out = super()._apply(fn, *args, **kwargs)
        if "captures" in self.__dict__:
            self.drop_analyses()
        return out

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @schedule.setter
    def schedule(self, schedule: Schedule) -> None:
        """A new schedule keeps what does not depend on it (capture, attention match, label propagation and
        scopes when its `layout:` overrides are the same) and re-derives the rest: the analyses of another
        `layout:` are dropped (captured again on the next call); the others check that the new schedule reduces
        something (a ScheduleError here, not on the next call), note its unused selectors and drop their run
        plans and variants' plans."""
        schedule = load_schedule(schedule)
        with self._lock:
            for sig, cap in list(self.captures.items()):
                if not cap.derives_from(schedule):
                    del self.captures[sig]
                    if self.last_capture is cap:
                        self.last_capture = None
                else:
                    cap.apply_schedule(schedule)
            self._schedule = schedule

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
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None:
                raise
            return getattr(model, name)

    # --- step control ------------------------------------------------------------------------------
    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Fix the step for the following calls of this thread (None: back to counting timesteps)."""
        self.generations.set_step(step, num_steps)

    @contextlib.contextmanager
    def generation(self, num_steps: int | None = None):
        """One generation of this thread: its own step clock and state; `num_steps` serves step_fraction
        rules and bounds the steps. Nested generations leave the outer one as it was; when it closes, later
        runs of this thread counted from timesteps take its length as theirs (where a schedule needs one)."""
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
        cap = self._once(self.captures, _signature(kw), lambda: analyze(self.model, kw, self.schedule))
        self.last_capture = cap
        return cap

    def _once(self, store: dict, key, build):
        """store[key], built by build() once, under the model's lock and outside inference mode, where missing."""
        value = store.get(key)
        if value is None:
            with self._lock:
                value = store.get(key)
                if value is None:
                    with outside_inference_mode():
                        value = store[key] = build()
        return value

    def plan(self, cap: Analysis, num_steps: int | None = None) -> RunPlan:
        """The run plan of this analysis for num_steps (None: open-ended), computed once."""
        plan = cap.plans.get(num_steps)
        if plan is None:
            with self._lock:
                plan = cap.plan(self.schedule, num_steps, self.max_variants)
        return plan

    def variant(self, cap: Analysis, key: tuple) -> torch.fx.GraphModule:
        return self._once(cap.variants, key, lambda: rewrite(cap.graph, cap.sites, key)
                          if any(c is not None for c in key) else cap.graph)

    def runner(self, cap: Analysis, key: tuple, kw: dict):
        """The callable that runs a variant: the backend's lowering of its GraphModule, made once per variant."""
        return self._once(cap.runners, key, lambda: prepare_variant(self.backend, self.variant(cap, key), key, kw,
                                                                    self.backend_options))

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

    @torch.compiler.disable(recursive=True)
    def forward(self, *args, **kwargs):
        """One call: the step's variant on the chosen backend. Dynamo does not trace into it (torch.compile of a
        ReducedModel runs it as it is; backend="inductor" is how its variants are compiled)."""
        kw = capture_pass.bind_call(self.model, args, kwargs)
        cap = self.analysis(kw)
        return run_call(self.generations, kw, lambda gen, call: self._choose(cap, kw, gen, call), self.device,
                        self.on_state)

    def _choose(self, cap: Analysis, kw: dict, gen, call) -> ChosenVariant:
        """The variant of this call's step (run plan of the generation's length) and how to run it."""
        num_steps = gen.resolved_num_steps(self.schedule.num_steps, self.schedule.needs_num_steps)
        plan = self.plan(cap, num_steps)
        key = self.last_key = self._key(plan, call.step)
        spec = self.variant(cap, key).meta.get("ditreduce_state")
        runner = self.runner(cap, key, kw)
        if spec is None:
            return ChosenVariant(variant_label(key), {}, plan.step_dependent, lambda feed: (runner(**kw), None))

        def run(feed):
            out, extra = runner(**(kw if feed is None else dict(kw, state=feed)))
            return out, extra["state"]

        return ChosenVariant(variant_label(key), spec["inputs"], plan.step_dependent, run)

    def export(self, out_dir, num_steps: int | None = None, **example_kwargs):
        """One ONNX graph per variant of an N-step run + manifest.json + one shared weights file."""
        from .backends.export import export_onnx

        return export_onnx(self, out_dir, num_steps, example_kwargs)

    def export_programs(self, num_steps: int | None = None, **example_kwargs) -> dict:
        """{variant name: torch.export.ExportedProgram} (Torch-TensorRT, AOTInductor)."""
        from .backends.programs import export_programs

        return export_programs(self, num_steps, example_kwargs)

    def save_schedule(self, directory) -> Path:
        """Write the schedule as `directory/ditreduce_schedule.yaml` (load_schedule reads it back)."""
        path = Path(directory) / SCHEDULE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(schedule_yaml(self.schedule))
        return path

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """The wrapped model's save_pretrained (its own keys and config: it loads as the plain model) and the
        schedule beside its weights (SCHEDULE_FILE)."""
        if not hasattr(self.model, "save_pretrained"):
            raise UnsupportedModelError(
                f"{type(self.model).__name__} has no save_pretrained: save the weights with "
                "torch.save(reduced.state_dict(), path) (the wrapped model's keys) and the schedule with "
                "reduced.save_schedule(directory)")
        self.model.save_pretrained(save_directory, **kwargs)
        self.save_schedule(save_directory)

    def report(self, num_steps: int | None = None):
        from .report import build_report

        if self.last_capture is None:
            raise RuntimeError("ReducedModel captures lazily on its first call: call it once (or capture(**kwargs)) "
                               "before report()")
        if num_steps is None:   # the latest generation's length (its generation(num_steps=), or the steps it ran)
            num_steps = self.generations.resolved_num_steps(self.schedule.num_steps, self.schedule.needs_num_steps)
        return build_report(self, self.last_capture, num_steps)


def check_wrappable(model) -> None:
    """A named error, with the way out, for what compile_with_reduction cannot wrap."""
    what = type(model).__name__
    if isinstance(model, ReducedModel):
        raise NotAModelError("model is already a ReducedModel: wrap its `.model` (the original) with the new "
                                    "schedule, or set `reduced.schedule = ...` to change the schedule in place")
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "transformer", None), nn.Module):
        raise NotAModelError(
            f"compile_with_reduction takes the transformer, got a pipeline ({what}): use "
            "`pipe.transformer = compile_with_reduction(pipe.transformer, schedule)` (then run the pipeline inside "
            "`with pipe.transformer.generation(num_steps=N):` for step_fraction schedules), or "
            "`ditreduce.apply(pipe, schedule)`, which does both")
    if not isinstance(model, nn.Module):
        raise NotAModelError(
            f"compile_with_reduction takes a torch.nn.Module (a diffusers transformer or your own DiT), got {what}: "
            "pass the module whose forward runs the denoiser (for a diffusers pipeline, `pipe.transformer`)")


def _state_dict_as_the_model_s(module, state_dict, prefix, local_metadata):
    """state_dict() of a ReducedModel has the wrapped model's keys (`model.` dropped): a reduced model's weights
    load into the plain model and back."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    return state_dict


def _load_state_dict_of_the_model(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
    """load_state_dict() takes the wrapped model's keys (or the same keys under `model.`); the captured graphs
    hold the old weights, so they go."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
    module.drop_analyses()


def compile_with_reduction(model: nn.Module, schedule="uniform-50", backend: str = "eager",
                           backend_options: dict | None = None, max_variants: int = MAX_VARIANTS,
                           **example_kwargs) -> ReducedModel:
    """Wrap `model` so its self/joint attention runs on fewer tokens, as `schedule` says.

    schedule: a YAML path, a preset name, a dict or a Schedule. backend: eager | inductor | aotinductor |
    onnxruntime | tensorrt (how each variant runs); backend_options: {"providers": [...]} (onnxruntime), {"precision":
    "fp16", "workspace_gib": 8} (tensorrt). max_variants: more distinct variants in a run is a
    ScheduleError. Capture is lazy (first call); pass example keyword arguments to capture now.
    """
    reduced = ReducedModel(model, load_schedule(schedule), backend, backend_options, max_variants)
    if example_kwargs:
        reduced.capture(**example_kwargs)
    return reduced
