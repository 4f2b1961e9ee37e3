"""The run model shared by every runner (eager / inductor runtime, ONNX Runtime, TensorRT, calibration):
which step a call is, which state slot it uses, and the method state carried between steps.

    StepClock   timestep -> step, for samplers whose timestep falls (diffusers) or rises (flow matching
                integrating t from 0 to 1): the direction is learned from the first two distinct
                timesteps; equal timesteps stay on one step (CFG as two calls, Heun's second evaluation);
                a timestep against the direction starts a new generation.
    StateStore  {(slot, site): {name: tensor}}: slot = the call's index within its step (CFG as two calls
                keeps one state per half; CFG batched into one call uses slot 0), shape-checked feeds.
    Generation  one generation: a clock, a store, num_steps, an explicit set_step, and the history of
                (step, slot, variant) it ran. A runner holds one per thread (see Generations).
"""
from __future__ import annotations

import contextlib
import itertools
import math
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .errors import ModelCallError, ScheduleError, StateError

_RUNS = itertools.count()   # generation numbers, unique in the process
STUCK_CALLS = 4  # calls on one step, with no second step seen, after which a step-dependent run warns


class StepClockWarning(UserWarning):
    """The calls of a generation never advance the step clock, so a step-dependent schedule runs step 0 only."""


class RunLengthWarning(UserWarning):
    """A generation ran another number of steps than the plan it ran was made for (generation(num_steps=N), an
    export's num_steps): its step_fraction rules were placed for the other length."""


def as_float(timestep) -> float:
    """The call's timestep as a float (the first entry of a tensor); NaN is a ModelCallError."""
    v = float(timestep.reshape(-1)[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    if math.isnan(v):
        raise ModelCallError("the timestep is NaN: ditreduce counts denoising steps from the timestep; pass a finite "
                             "timestep (or call set_step(i, num_steps) before each call)")
    return v


class StepClock:
    """Maps a generation's timesteps to step indices, in either direction."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.prev: float | None = None
        self.direction = 0      # +1 rising, -1 falling, 0 not known yet (one distinct timestep seen)
        self.step = -1

    def observe(self, t: float) -> bool:
        """Count one call at timestep t; True when t starts a new generation."""
        if self.prev is not None and t == self.prev:
            return False
        d = 0 if self.prev is None else (1 if t > self.prev else -1)
        if d == 0 or (self.direction and d != self.direction):
            self.reset()
            self.prev, self.step = t, 0
            return True
        self.direction, self.prev, self.step = d, t, self.step + 1
        return False


class StateStore:
    """Method state between steps: {(slot, site): {name: tensor}}."""

    def __init__(self):
        self.held: dict[tuple, dict[str, torch.Tensor]] = {}

    def clear(self) -> None:
        self.held.clear()

    def feed(self, inputs: dict, step: int, slot: int, device, zeros_if_missing: bool) -> dict:
        """{site: {name: tensor}} for a variant's state inputs {site: {name: (shape, dtype)}}. Missing state is a
        StateError unless zeros_if_missing (a generation's first step, or set_step jumping to a step: the
        state starts from zeros there)."""
        feed = {}
        for site, names in inputs.items():
            held = self.held.get((slot, site), {})
            feed[site] = {}
            for name, (shape, dtype) in names.items():
                t = held.get(name)
                if t is None:
                    if not zeros_if_missing:
                        raise StateError(
                            f"step {step}: the variant of site {site} needs state {name!r} that no earlier step of this "
                            f"generation produced (call {slot} of the step); stateful methods (DiTo) start at their "
                            "prime step, so run the generation from its first step (or use set_step, which feeds zeros)")
                    t = torch.zeros(shape, dtype=dtype, device=device)
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise StateError(
                        f"step {step}: state {site}.{name} is {t.dtype}{list(t.shape)} but this variant takes "
                        f"{dtype}{list(shape)}: the batch size or resolution changed inside a generation; start a new "
                        "generation (`with model.generation():`, or restart the timesteps)")
                feed[site][name] = t
        return feed

    def update(self, slot: int, state_out: dict) -> None:
        """Hold a call's state outputs, contiguous: a variant may return a slice of one buffer (DiTo's merged /
        unmerged halves of one ordering), and a compiled variant guards on its inputs' strides, so state in
        one layout whatever produced it (a variant, or the zeros feed() starts from) never recompiles one."""
        for site, tensors in state_out.items():
            self.held[(slot, site)] = {name: canonical_layout(t) for name, t in tensors.items()}


def canonical_layout(t: torch.Tensor) -> torch.Tensor:
    """t with the strides torch.zeros(t.shape) has. `contiguous()` keeps an empty tensor's strides as they came
    (DiTo at its largest ratio merges every source: `unmerged` is [B, 0], stride (0, 1) from a slice, (1, 1) from
    zeros), which a compiled variant's guard tells apart: a recompile (seconds) in the middle of a generation."""
    return t.contiguous() if t.numel() else torch.empty(t.shape, dtype=t.dtype, device=t.device)


@dataclass
class Call:
    step: int | None
    slot: int               # the call's index within its step (CFG as two calls: 0 uncond, 1 cond)
    generation: int = 0     # which generation the call belongs to (unique in the process)
    variant: str = ""


@dataclass
class Generation:
    """One generation's run state. `num_steps` from generation(num_steps=) or set_step(i, num_steps)."""

    num_steps: int | None = None
    clock: StepClock = field(default_factory=StepClock)
    state: StateStore = field(default_factory=StateStore)
    explicit: tuple | None = None               # set_step's (step, num_steps), None: count timesteps
    history: list[Call] = field(default_factory=list)
    learned_num_steps: int | None = None        # steps seen by the previous generation counted here
    number: int = field(default_factory=lambda: next(_RUNS))  # Call.generation: new at every restart
    same_t_calls: int = 0                       # consecutive calls at an unchanged timestep (restarts included)
    _latent0: torch.Tensor | None = None        # step 0's latent: a repeated first timestep with another is a restart
    _warned: bool = False

    def restart(self) -> None:
        """A new generation begins inside this one (the timesteps restarted): state and history go."""
        ran = self.steps_run()
        if ran is not None:
            self.learned_num_steps = ran
        if self.history:
            self.number = next(_RUNS)
        self.state.clear()
        self.history = []
        self._latent0 = None

    def advance(self, timestep, latent: torch.Tensor | None) -> Call:
        """The step and state slot of the next call."""
        if self.explicit is not None:
            step = self.explicit[0]
            if self.history and self.history[-1].step is not None and step < self.history[-1].step:
                self.restart()
            call = Call(step, 0, self.number)
        elif timestep is None:
            call = Call(None, 0, self.number)
        else:
            prev_t = self.clock.prev
            new = self.clock.observe(as_float(timestep))
            self.same_t_calls = self.same_t_calls + 1 if self.clock.prev == prev_t else 1
            if not new and self.clock.step == 0 and latent is not None and self._latent0 is not None and (
                    latent.shape != self._latent0.shape or not torch.equal(latent, self._latent0)):
                self.clock.reset()
                self.clock.observe(as_float(timestep))
                new = True   # the first timestep again with another latent: not CFG's second call, a restart
            if new or not self.history:
                self.restart()
                self._latent0 = None if latent is None else latent.detach().clone()
            prev = self.history[-1] if self.history else None
            slot = prev.slot + 1 if prev is not None and prev.step == self.clock.step else 0
            call = Call(self.clock.step, slot, self.number)
        self.history.append(call)
        return call

    def forget(self, call: Call) -> None:
        """Drop a call that did not run (its variant could not be chosen): it is no step of this generation."""
        if self.history and self.history[-1] is call:
            self.history.pop()

    def steps_run(self) -> int | None:
        """How many steps this generation has run (the last step index + 1), None before any call with a step."""
        steps = [c.step for c in self.history if c.step is not None]
        return max(steps) + 1 if steps else None

    def check_length(self, planned: int | None, source: str) -> None:
        """Warn when this generation ran another number of steps than `planned`, the length its plan was made
        for (`source` says where that length came from)."""
        ran = self.steps_run()
        if planned is not None and ran is not None and ran != planned and self.explicit is None:
            warnings.warn(
                f"the generation ran {ran} steps, but its plan was made for {planned} ({source}): the step_fraction "
                f"rules were placed for {planned} steps, so the run used other steps' variants. Give the run's real "
                f"number of steps", RunLengthWarning, stacklevel=4)

    def resolved_num_steps(self, default: int | None, needed: bool = False) -> int | None:
        """num_steps of this generation: set_step's, generation(num_steps=)'s, else `default` (the schedule's);
        else, only where the schedule needs one (step_fraction rules), the previous generation's length."""
        if self.explicit is not None and self.explicit[1] is not None:
            return self.explicit[1]
        return self.num_steps or default or (self.learned_num_steps if needed else None)

    def warn_if_stuck(self, step_dependent: bool) -> None:
        """A step-dependent run whose timestep stopped changing: every call runs one step's variant."""
        if step_dependent and not self._warned and self.explicit is None and self.same_t_calls >= STUCK_CALLS:
            self._warned = True
            warnings.warn(
                f"{self.same_t_calls} calls in a row at one timestep all ran as step {self.clock.step}: so "
                "the schedule's step rules / DiTo phases never advance (every call runs that step's variant). Pass "
                "the real timestep, or call set_step(i, num_steps) before each call", StepClockWarning, stacklevel=4)


def check_step(step, num_steps) -> tuple[int | None, int | None]:
    """set_step's arguments validated: ints (not bools), 0 <= step < num_steps, num_steps >= 1."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if step is None:
        return None, None
    if not is_int(step) or step < 0:
        raise ScheduleError(f"set_step: step must be an int >= 0 (or None to count timesteps again), got {step!r}")
    if num_steps is not None and (not is_int(num_steps) or num_steps < 1):
        raise ScheduleError(f"set_step: num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps is not None and step >= num_steps:
        raise ScheduleError(f"set_step: step {step} is outside a run of num_steps={num_steps} (steps 0..{num_steps - 1})")
    return step, num_steps


class Generations:
    """The generations of one runner, per thread: each thread counts its own steps and holds its own state,
    so N threads each running their own generation on one model get the single-threaded outputs.
    `open(num_steps)` pushes an explicit generation (nested ones leave the outer one as it was)."""

    def __init__(self):
        self._local = threading.local()
        self.last: Generation | None = None     # the latest generation any thread ran (report() shows it)

    def _stack(self) -> list[Generation]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = [Generation()]
        return stack

    @property
    def current(self) -> Generation:
        return self._stack()[-1]

    def last_state(self) -> dict:
        """{(slot, site): {name: tensor}} the latest generation holds (read it, e.g. to inspect DiTo's state)."""
        return {} if self.last is None else self.last.state.held

    @contextlib.contextmanager
    def open(self, num_steps: int | None = None):
        """Push a generation of this thread; when it closes, the thread's enclosing generation learns its length
        (so a later run counted from timesteps resolves step_fraction rules without being told again)."""
        if num_steps is not None:
            check_step(0, num_steps)
        gen = Generation(num_steps=num_steps)
        stack = self._stack()
        stack.append(gen)
        try:
            yield gen
        finally:
            stack.remove(gen)
            length = gen.num_steps or gen.steps_run()
            if length is not None:
                stack[-1].learned_num_steps = length

    def resolved_num_steps(self, default: int | None, needed: bool = False) -> int | None:
        """The step count of the latest generation any thread ran (else this thread's current one)."""
        gen = self.last if self.last is not None else self.current
        return gen.resolved_num_steps(default, needed)

    def set_step(self, step, num_steps=None) -> None:
        step, num_steps = check_step(step, num_steps)
        gen = self.current
        gen.explicit = None if step is None else (step, num_steps)
        if step is None:
            gen.clock.reset()

    def advance(self, timestep, latent) -> tuple[Generation, Call]:
        gen = self.current
        call = gen.advance(timestep, latent)
        self.last = gen
        return gen, call


@dataclass
class ChosenVariant:
    """What a runner chose for one call: the variant's label, its state inputs {site: {name: (shape, dtype)}}
    (empty: stateless), whether the run's variants depend on the step, and `run(state_feed) -> (output,
    state_out or None)`."""

    label: str
    state_inputs: dict
    step_dependent: bool
    run: Callable[[dict | None], tuple[Any, dict | None]]


def run_call(generations: Generations, kw: dict, choose: Callable[[Generation, Call], ChosenVariant], device,
             on_state: Callable | None = None):
    """The run loop every runner shares (ReducedModel, the manifest runners): advance this thread's step clock
    from the call's timestep (any spelling, inputs.timestep_value) -> choose the step's variant -> feed the
    state it reads -> run it -> hold the state it returns."""
    from .passes.inputs import timestep_value

    gen, call = generations.advance(timestep_value(kw), latent_of(kw))
    try:
        chosen = choose(gen, call)
    except Exception:
        gen.forget(call)   # a call that did not run is no step: the generation's learned length stays true
        raise
    call.variant = chosen.label
    gen.warn_if_stuck(chosen.step_dependent)
    feed = None
    if chosen.state_inputs:
        feed = gen.state.feed(chosen.state_inputs, call.step or 0, call.slot, device,
                              zeros_if_missing=gen.explicit is not None or not call.step)
    out, state_out = chosen.run(feed)
    if state_out is not None:
        gen.state.update(call.slot, state_out)
        if on_state is not None:
            on_state(call, state_out)
    return out


def latent_of(kw: dict) -> torch.Tensor | None:
    """The call's latent: the first floating tensor argument of 3+ dims (hidden_states, x, latents, ...)."""
    for v in kw.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 3:
            return v
    return None
