"""The schedule IR, format version 1: what to reduce, where, when.

    version: 1
    method: uniform          # default method for every selected site
    ratio: 0.5               # default fraction of image tokens removed
    scope: attention+proj    # where the region sits: attention | attention+proj | attention+cross | block
    prop_attn: false         # proportional attention: + log(token size) on each kept key's logits
    kinds: [self, joint]     # site kinds reduced by default (cross is never reduced by default)
    ratio_step: 0.05         # ratios are quantised to this grid: fewer distinct k, fewer variants
    num_steps: 20            # optional: needed by step_fraction rules when the pipeline does not say
    layout: {grid: [32, 32], text_tokens: 0, text_position: before}   # optional override
    rules:                   # applied in order; a later matching rule overrides earlier ones
      - blocks: {start: -4}  # field by field (ratio and method separately)
        ratio: 0.0
      - steps: {start: 0, stop: 3}
        method: none         # `none`: the site stays dense at those steps

Rule selectors (all optional, all must match): blocks (range or list, negatives from the end),
modules (fnmatch glob on the module path), kinds, steps (range or list of step indices, negatives
from the end) and step_fraction ({start, stop} in [0, 1] of the run, half open).
"""
from __future__ import annotations

import fnmatch
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..methods.base import MAX_RATIO

Kind = Literal["self", "cross", "joint"]
Scope = Literal["attention", "attention+proj", "attention+cross", "block"]
FORMAT_VERSION = 1
MAX_STEPS = 100_000      # num_steps above this is a typo, not a run
MAX_TOKENS = 1 << 24     # a grid side or text length above this is a typo


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IndexRange(_Strict):
    """Half-open [start, stop) over indices; negatives count from the end; None is open."""

    start: int | None = None
    stop: int | None = None

    def contains(self, i: int, n: int | None) -> bool:
        def norm(v):
            if v is None or v >= 0:
                return v
            if n is None:
                raise ValueError("a negative index needs the total count")
            return n + v

        lo, hi = norm(self.start), norm(self.stop)
        return (lo is None or i >= lo) and (hi is None or i < hi)


def _parse_range(v):
    if isinstance(v, str):
        parts = v.split(":")
        if len(parts) != 2:
            raise ValueError("a range string is 'start:stop' (either side may be empty)")
        try:
            return {"start": int(parts[0]) if parts[0].strip() else None,
                    "stop": int(parts[1]) if parts[1].strip() else None}
        except ValueError:
            raise ValueError("range bounds must be integers") from None
    return v


Selector = Union[IndexRange, list[int]]


class FractionRange(_Strict):
    start: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    stop: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0

    @model_validator(mode="after")
    def _ordered(self):
        if self.start > self.stop:
            raise ValueError("start must be <= stop")
        return self


def _selector_contains(sel: Selector | None, i: int, n: int | None) -> bool:
    if sel is None:
        return True
    if isinstance(sel, IndexRange):
        return sel.contains(i, n)
    return any(i == (j if j >= 0 else (n if n is not None else 0) + j) for j in sel)


Ratio = Annotated[float, Field(ge=0.0, le=MAX_RATIO, allow_inf_nan=False)]


class Rule(_Strict):
    blocks: Selector | None = None
    modules: str | None = None
    kinds: list[Kind] | None = None
    steps: Selector | None = None
    step_fraction: FractionRange | None = None
    ratio: Ratio | None = None
    method: str | None = None
    scope: Scope | None = None
    params: dict[str, Union[float, int, str, bool]] | None = None
    prop_attn: bool | None = None

    _pre_blocks = field_validator("blocks", "steps", mode="before")(_parse_range)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v):
        return None if v is None else _check_method(v)

    @model_validator(mode="after")
    def _sets_something(self):
        if self.ratio is None and self.method is None and self.params is None and self.scope is None \
                and self.prop_attn is None:
            raise ValueError("a rule must set at least one of: ratio, method, scope, params, prop_attn")
        if self.steps is not None and self.step_fraction is not None:
            raise ValueError("use either steps or step_fraction in one rule, not both")
        return self

    def matches_site(self, block: int | None, num_blocks: int, module: str, kind: str) -> bool:
        if self.blocks is not None and (block is None or not _selector_contains(self.blocks, block, num_blocks)):
            return False
        if self.modules is not None and not fnmatch.fnmatchcase(module, self.modules):
            return False
        return self.kinds is None or kind in self.kinds

    def matches_step(self, step: int, num_steps: int | None) -> bool:
        if self.steps is not None:
            return _selector_contains(self.steps, step, num_steps)
        if self.step_fraction is not None:
            f = step / num_steps
            return self.step_fraction.start <= f < self.step_fraction.stop or (
                self.step_fraction.stop == 1.0 and step == num_steps - 1)
        return True

    @property
    def step_dependent(self) -> bool:
        return self.steps is not None or self.step_fraction is not None


class LayoutOverride(_Strict):
    """For sites whose layout the analysis could not decide: the image lattice and the text segment."""

    grid: list[Annotated[int, Field(gt=0, le=MAX_TOKENS)]] = Field(min_length=2, max_length=3)
    text_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = 0
    text_position: Literal["before", "after"] = "before"
    modules: str | None = None


class Schedule(_Strict):
    version: Literal[1] = 1
    method: str = "uniform"
    ratio: Ratio = 0.5
    scope: Scope = "attention+proj"
    prop_attn: bool = False  # proportional attention: log(token size) added to each kept key's logits
    kinds: list[Kind] = Field(default_factory=lambda: ["self", "joint"])
    ratio_step: Annotated[float, Field(ge=1e-3, le=0.5, allow_inf_nan=False)] = 0.05   # finer grids give one variant per k
    num_steps: Annotated[int, Field(gt=0, le=MAX_STEPS)] | None = None
    params: dict[str, dict[str, Union[float, int, str, bool]]] = Field(default_factory=dict)
    layout: LayoutOverride | None = None
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v):
        return _check_method(v)

    @field_validator("params")
    @classmethod
    def _param_methods(cls, v):
        for name, params in v.items():
            _check_method(name)
            _check_params(name, params)
        return v

    @model_validator(mode="after")
    def _rule_params(self):
        for i, rule in enumerate(self.rules):
            if rule.params is not None:
                names = {rule.method} if rule.method not in (None, "none") else self.methods
                for name in names:
                    try:
                        _check_params(name, {**self.params.get(name, {}), **rule.params})
                    except ValueError as e:
                        raise ValueError(f"rules[{i}].params: {e}") from None
        return self

    @property
    def methods(self) -> set[str]:
        """The methods the schedule uses (its own and its rules'), `none` left out."""
        return ({self.method} | {r.method for r in self.rules if r.method is not None}) - {"none"}

    @property
    def step_dependent(self) -> bool:
        return any(r.step_dependent for r in self.rules)

    @property
    def needs_num_steps(self) -> bool:
        """step_fraction rules or negative step indices: lowering needs the run's number of steps."""
        return any(r.step_fraction is not None or _has_negative(r.steps) for r in self.rules)


def _has_negative(sel: Selector | None) -> bool:
    if sel is None:
        return False
    if isinstance(sel, IndexRange):
        return any(v is not None and v < 0 for v in (sel.start, sel.stop))
    return any(v < 0 for v in sel)


def _check_params(name: str, params: dict) -> None:
    from ..methods import MethodParamError, get_method

    try:
        get_method(name)(**params)
    except MethodParamError as e:
        raise ValueError(str(e)) from None


def _check_method(v: str) -> str:
    from ..methods import METHODS

    allowed = sorted(METHODS) + ["none"]
    if v not in allowed:
        raise ValueError(f"unknown method {v!r}; allowed: {', '.join(allowed)}")
    return v
