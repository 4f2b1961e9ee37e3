from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from annotated_types import Interval

from ..regions import Selection

METHODS: dict[str, type["Method"]] = {}
MAX_RATIO = 0.95   # the largest fraction of a site's image tokens any method removes (and any schedule asks for)
INT64 = Interval(ge=-2**63, le=2**63 - 1)  # what a torch.Generator seed or an int64 tensor holds


def in_interval(val: float, rng: Interval) -> bool:
    return ((rng.gt is None or val > rng.gt) and (rng.ge is None or val >= rng.ge)
            and (rng.lt is None or val < rng.lt) and (rng.le is None or val <= rng.le))


def describe_interval(rng: Interval) -> str:
    lo = f"({rng.gt}" if rng.gt is not None else f"[{rng.ge}" if rng.ge is not None else "(-inf"
    hi = f"{rng.lt})" if rng.lt is not None else f"{rng.le}]" if rng.le is not None else "inf)"
    return f"{lo}, {hi}"


def register_method(cls: type["Method"]) -> type["Method"]:
    METHODS[cls.name] = cls
    return cls


def preferred_methods() -> list[str]:
    """Every registered method in the order of preference the bench and the demo use: the ranked ones first
    (Method.preferred, lower first), then the others in the order they were registered."""
    ranked = sorted((cls.preferred, i) for i, cls in enumerate(METHODS.values()) if cls.preferred is not None)
    names = list(METHODS)
    return [names[i] for _, i in ranked] + [n for n in names if METHODS[n].preferred is None]


def get_method(name: str) -> type["Method"]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {sorted(METHODS)}") from None


from ..errors import MethodParamError  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class SiteContext:
    """The static facts a selection knows of its site and variant (Python values fixed at rewrite time): image
    tokens n, tokens asked for k, the lattice, whether regions are forced (k = N runs the real selection),
    and, for methods with state, the batch, channels, dtype and device of the site's output tokens."""

    n: int
    k: int
    lattice: tuple
    forced: bool = False
    batch: int = 0
    channels: int = 0
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")

    def as_kwargs(self) -> dict:
        """The fields as a graph call's keyword arguments (FX writes dtypes, devices and tuples as code)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class StateSpec:
    """What a method carries between calls, per site and variant, as {name: (shape, dtype)}: `inputs` the
    variant reads (fed from the previous call's outputs of the same names, zeros at a generation's first step),
    `selected` the state its selection returns, `observed` the state its `observe` returns from the site's
    output tokens after attention."""

    inputs: dict = field(default_factory=dict)
    selected: dict = field(default_factory=dict)
    observed: dict = field(default_factory=dict)

    @property
    def outputs(self) -> dict:
        return {**self.selected, **self.observed}


class Method:
    """Contract every reduction method follows: one selection function of fixed signature.

    A method is a registered subclass (`@register_method`, from any package) with
        select(x, lattice, k, pairs=None) -> Selection
    for a method without state: x the image tokens [B, N, C] (None for a static method), pairs the batch's CFG
    pairs for `cfg: shared` (lattice.cfg_pairs; None otherwise). A method with state implements the general form
        state_spec(ctx) -> StateSpec
        selection(x, state, ctx, pairs=None) -> (Selection, {name: tensor} of state_spec.selected)
        observe(y, state, sel, ctx) -> {name: tensor} of state_spec.observed
    (ctx: SiteContext; state: the variant's state inputs; y: the site's output tokens [B, N, C]). The rewrite
    inserts one `selection` call per site (a static method's is computed at rewrite time and folded into
    constants), and one `observe` call after the region where the spec observes anything; it never needs to
    know a method's internals.

    name         the schedule's `method:` value
    reduces_q    True: q and k/v are reduced and outputs reconstructed; False: only k/v (ToDo-style), by
                 gathers or merges whose weights sum to 1 (then pooling before an affine k/v projection
                 equals pooling after it: scope.plan_kv_projections relies on it)
    static       True: the selection depends only on (lattice, k); it is computed once at rewrite time
                 and baked into the graph as constants. False: it runs inside the graph.
    reads_tokens False: the in-graph selection reads only its state (DiTo), so no token tensor is built for it
                 (see docs/methods.md for which tensor each scope scores)
    defaults     the parameters the method takes, with their defaults (the schedule's `params:`)
    choices      allowed values of string parameters
    ranges       the allowed interval of numeric parameters (annotated_types.Interval); every float must
                 also be finite and every int fit in int64 (INT64), declared or not
    max_ratio    the largest ratio the method supports (a larger one is a ScheduleError at lowering)
    stateful     True: the method carries tensors across steps (DiTo); its assign_phases gives each step
                 its phase, its state_spec says what each variant takes and returns under a `state` key
    preferred    the method's rank in the bench's and demo's order of preference (lower first; None: not
                 preferred, listed after the ranked ones)
    default_schedule  the schedule `ditreduce demo` runs for the method (a preset name or a dict; None:
                 `<name>-default` where that preset exists, else ratio 0.5 after the first 20 % of the steps;
                 schedules.default_schedule resolves it)
    """

    name: ClassVar[str]
    reduces_q: ClassVar[bool] = True
    static: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    ranges: ClassVar[dict[str, Interval]] = {}
    max_ratio: ClassVar[float] = MAX_RATIO
    stateful: ClassVar[bool] = False
    reads_tokens: ClassVar[bool] = True
    preferred: ClassVar[int | None] = None
    default_schedule: ClassVar[str | dict | None] = None

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise MethodParamError(f"method {self.name!r} takes no parameter {unknown}; its parameters: {allowed}")
        self.params = dict(self.defaults)
        for key, val in params.items():
            want = type(self.defaults[key])
            if want is float and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if not isinstance(val, want) or (want is int and isinstance(val, bool)):
                raise MethodParamError(f"params.{self.name}.{key}: expected {want.__name__}, got {val!r}")
            if key in self.choices and val not in self.choices[key]:
                raise MethodParamError(f"params.{self.name}.{key}: {val!r} is not one of {list(self.choices[key])}")
            self._check_range(key, val)
            self.params[key] = val

    def _check_range(self, key: str, val: Any) -> None:
        if isinstance(val, bool) or not isinstance(val, (int, float)):
            return
        if isinstance(val, float) and not math.isfinite(val):
            raise MethodParamError(f"params.{self.name}.{key}: {val!r} must be a finite number")
        rng = self.ranges.get(key, INT64 if isinstance(val, int) else None)
        if rng is not None and not in_interval(val, rng):
            raise MethodParamError(f"params.{self.name}.{key}: {val!r} must be in {describe_interval(rng)}")

    def kept_count(self, n: int, k: int, lattice: tuple[int, ...]) -> int:
        """The number of tokens the method really keeps when asked for k of n (TopK grouping, pooling grids)."""
        return k

    @classmethod
    def assign_phases(cls, column: list, complete: bool = False) -> list:
        """One site's per-step configs (a RegionConfig or None per step, a run in order) -> the same with
        this method's configs replaced by the per-step variants it needs. Identity for methods without
        phases; DiTo makes prime / match / reduce / tail steps. complete: the column is the whole run (an open
        plan's is a prefix). Called by schedules.plan for every method present."""
        return column

    def select(self, x: torch.Tensor | None, lattice: tuple[int, ...], k: int, pairs: torch.Tensor | None = None
               ) -> Selection:
        """The selection of a method without state (see the class docstring)."""
        raise NotImplementedError

    def state_spec(self, ctx: SiteContext) -> StateSpec:
        """What this variant of the method carries between calls (nothing, unless stateful)."""
        return StateSpec()

    def selection(self, x: torch.Tensor | None, state: dict, ctx: SiteContext, pairs: torch.Tensor | None = None
                  ) -> tuple[Selection, dict]:
        """The one selection function the rewrite calls: (Selection, selected state)."""
        return self.select(x, ctx.lattice, ctx.k, pairs=pairs), {}

    def observe(self, y: torch.Tensor, state: dict, sel: Selection, ctx: SiteContext) -> dict:
        """The state taken from the site's output tokens y [B, N, C] after attention (none, unless stateful)."""
        return {}
