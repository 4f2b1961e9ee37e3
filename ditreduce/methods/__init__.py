"""Reduction methods. Each method turns (tokens, state, site context) into a region Selection and new state
(Method.selection; base.py has the contract).

A method is registered by name (`@register_method`, from this package or any other); the schedule IR names
it in `method:`, and registration alone gives it its place in the bench and the demo (Method.preferred,
schedules.default_schedule). See docs/methods.md.
"""
from __future__ import annotations

from .base import (MAX_RATIO, METHODS, Method, MethodParamError, SiteContext, StateSpec, get_method,
                   preferred_methods, register_method)
from . import coredit, dito, random, todo, tome, uniform  # noqa: F401  (register the methods)

__all__ = ["MAX_RATIO", "METHODS", "Method", "MethodParamError", "SiteContext", "StateSpec", "get_method",
           "preferred_methods", "register_method"]
