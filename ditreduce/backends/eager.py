"""eager: a variant runs as its GraphModule (the reference every other backend is compared with)."""
from __future__ import annotations


def prepare(gm, kw: dict, label: str, options):
    return gm
