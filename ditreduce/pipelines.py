"""The pipeline one-liner: `ditreduce.apply(pipe, schedule)` reduces a diffusers pipeline's transformer and
runs every `pipe(...)` call as one generation whose length the pipeline's scheduler gives, so step_fraction
schedules resolve before the first step. `ditreduce.remove(pipe)` puts the original transformer back.

The pipeline's class is swapped for a subclass of the same name whose `__call__` opens the generation (the
idiom of tomesd's apply_patch: a special method cannot be patched on the instance). Inside the call the
scheduler's `set_timesteps` is observed: the number of distinct consecutive timesteps it sets is the number of
denoising steps the transformer's step clock will count (Heun's repeated timesteps are one step each).
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch
from torch import nn

from .errors import NotAModelError
from .runtime import ReducedModel, compile_with_reduction

_SUBCLASSES: dict[type, type] = {}


def apply(pipe, schedule=None, **options):
    """Reduce `pipe.transformer` with `schedule` (a preset name, YAML path, dict or Schedule; options as in
    compile_with_reduction) and make each `pipe(...)` call one generation of the pipeline's number of steps.
    With `schedule=None` the pipeline's transformer is kept as it is: a ReducedModel, or a runner over an
    exported manifest (`load_onnx`, `load_tensorrt`), whose step count the pipeline then gives. Returns `pipe`."""
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module) or not callable(getattr(type(pipe), "__call__", None)):
        raise NotAModelError(
            f"ditreduce.apply takes a diffusers pipeline with a `transformer` module, got {type(pipe).__name__}: "
            "for a bare transformer use compile_with_reduction(model, schedule) and run each generation inside "
            "`with model.generation(num_steps=N):`")
    if schedule is not None:
        if isinstance(transformer, ReducedModel):
            transformer = transformer.model
        pipe.transformer = compile_with_reduction(transformer, schedule, **options)
    elif not hasattr(transformer, "generation"):
        raise NotAModelError(
            f"ditreduce.apply(pipe) without a schedule keeps pipe.transformer, but {type(transformer).__name__} is "
            "not a reduced transformer: pass a schedule (e.g. ditreduce.apply(pipe, \"dito-default\"))")
    pipe.__class__ = _counting_class(_original_class(type(pipe)))
    return pipe


def remove(pipe):
    """Undo apply(): the original transformer (a ReducedModel's `.model`) and the pipeline's own class."""
    if isinstance(getattr(pipe, "transformer", None), ReducedModel):
        pipe.transformer = pipe.transformer.model
    pipe.__class__ = _original_class(type(pipe))
    return pipe


def _original_class(cls: type) -> type:
    return getattr(cls, "_ditreduce_original", cls)


def _counting_class(cls: type) -> type:
    """A subclass of the pipeline's class, of the same name (diffusers writes the class name into
    model_index.json), whose __call__ runs as one generation of the transformer."""
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        sub = _SUBCLASSES[cls] = type(cls.__name__, (cls,), {
            "__call__": _call_as_one_generation, "save_pretrained": _save_with_the_schedule, "_ditreduce_original": cls,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__reduce_ex__": _reduce_as_original})
    return sub


def _reduce_as_original(self, protocol):
    """Pickle / deepcopy a pipeline under its own class, re-applied on load."""
    cls = _original_class(type(self))
    state = dict(self.__dict__)
    return (_rebuild, (cls, state))


def _rebuild(cls, state):
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    obj.__class__ = _counting_class(cls)
    return obj


def _call_as_one_generation(self, *args, **kwargs):
    call = _original_class(type(self)).__call__
    transformer = getattr(self, "transformer", None)
    if not hasattr(transformer, "generation"):   # remove()d, or the transformer swapped for a plain one
        return call(self, *args, **kwargs)
    with transformer.generation(_num_inference_steps(call, self, args, kwargs)) as reduced, \
            _steps_from_scheduler(getattr(self, "scheduler", None), reduced):
        out = call(self, *args, **kwargs)
        gen = reduced.generations.current
        gen.check_length(gen.num_steps, "the steps the pipeline's scheduler set")
        return out


def _save_with_the_schedule(self, save_directory, *args, **kwargs):
    """save_pretrained of the pipeline with the original transformer's weights (diffusers saves only its own
    classes) and the schedule beside them, `transformer/ditreduce_schedule.yaml`: from_pretrained loads the plain
    pipeline, `ditreduce.apply(pipe, "<dir>/transformer/ditreduce_schedule.yaml")` reduces it again."""
    save = _original_class(type(self)).save_pretrained
    reduced = getattr(self, "transformer", None)
    if not isinstance(reduced, ReducedModel):
        return save(self, save_directory, *args, **kwargs)
    self.transformer = reduced.model
    try:
        out = save(self, save_directory, *args, **kwargs)
    finally:
        self.transformer = reduced
    reduced.save_schedule(Path(save_directory) / "transformer")
    return out


def _num_inference_steps(call, pipe, args, kwargs) -> int | None:
    """The call's `num_inference_steps` (its default where not given); None where the pipeline has none or the
    call gives its own timesteps / sigmas (the scheduler then says how many)."""
    try:
        bound = inspect.signature(call).bind(pipe, *args, **kwargs)
    except TypeError:
        return None   # the pipeline itself will say what is wrong with the call
    bound.apply_defaults()
    given = bound.arguments
    if any(given.get(name) is not None for name in ("timesteps", "sigmas")):
        return None
    n = given.get("num_inference_steps")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None


@contextlib.contextmanager
def _steps_from_scheduler(scheduler, reduced):
    """While the pipeline runs, each `scheduler.set_timesteps(...)` sets the generation's number of steps to the
    number of distinct consecutive timesteps it set (a pipeline that trims them afterwards, img2img's strength,
    runs fewer: the generation warns at its end that its length differed)."""
    original = getattr(scheduler, "set_timesteps", None)
    if original is None or "set_timesteps" in vars(scheduler):
        yield
        return

    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        steps = _distinct_steps(getattr(scheduler, "timesteps", None))
        if steps is not None:
            reduced.generations.current.num_steps = steps
        return out

    scheduler.set_timesteps = set_timesteps
    try:
        yield
    finally:
        del scheduler.set_timesteps


def _distinct_steps(timesteps) -> int | None:
    if timesteps is None:
        return None
    t = torch.as_tensor(timesteps).reshape(-1)
    if t.numel() == 0:
        return None
    return int((t[1:] != t[:-1]).sum()) + 1
