"""Reduction methods. Each method turns (tokens, lattice, k, state) into a region Selection.

A method is registered by name; the schedule IR names it in `method:`. See README "Methods".
"""
from __future__ import annotations

from .base import METHODS, Method, get_method, register_method
from . import uniform  # noqa: F401  (registers "uniform")

__all__ = ["METHODS", "Method", "get_method", "register_method"]
