from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from annotated_types import Interval

from ..regions import Selection

METHODS: dict[str, type["Method"]] = {}
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


def get_method(name: str) -> type["Method"]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; allowed: {sorted(METHODS)}") from None


from ..errors import MethodParamError  # noqa: F401  (re-exported)


class Method:
    """Contract every reduction method follows.

    name         the schedule's `method:` value
    reduces_q    True: q and k/v are reduced and outputs reconstructed; False: only k/v (ToDo-style), by
                 gathers or merges whose weights sum to 1 (then pooling before an affine k/v projection
                 equals pooling after it: scope.plan_kv_projections relies on it)
    static       True: the selection depends only on (lattice, k); it is computed once at rewrite time
                 and baked into the graph as constants. False: `select` runs inside the graph on a
                 token tensor (see docs/methods.md for which tensor each scope scores).
    defaults     the parameters the method takes, with their defaults (the schedule's `params:`)
    choices      allowed values of string parameters
    ranges       the allowed interval of numeric parameters (annotated_types.Interval); every float must
                 also be finite and every int fit in int64 (INT64), declared or not
    max_ratio    the largest ratio the method supports (a larger one is a ScheduleError at lowering)
    stateful     True: the method carries tensors across steps (DiTo); its assign_phases gives each step
                 its phase, and rewrite calls its
                 insert_select(builder, n, y_shape, y_dtype) / finish_state(builder, y) hooks and the
                 variant graph takes and returns them under a `state` key (see docs/methods.md, "DiTo")
    """

    name: ClassVar[str]
    reduces_q: ClassVar[bool] = True
    static: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple]] = {}
    ranges: ClassVar[dict[str, Interval]] = {}
    max_ratio: ClassVar[float] = 0.95
    stateful: ClassVar[bool] = False

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

    def select(self, x: torch.Tensor | None, lattice: tuple[int, ...], k: int) -> Selection:
        raise NotImplementedError
