"""Reduction methods. Each method turns (tokens, lattice, k, state) into a region Selection.

A method is registered by name; the schedule IR names it in `method:`. See docs/methods.md.
"""
from __future__ import annotations

from .base import METHODS, Method, MethodParamError, get_method, register_method
from . import coredit, dito, random, todo, tome, uniform  # noqa: F401  (register the methods)

__all__ = ["METHODS", "Method", "MethodParamError", "get_method", "register_method"]
