"""inductor: each variant graph compiled once with torch.compile(fullgraph=True).

fullgraph=True makes a graph break inside a variant an error instead of a silent split; the step
tracker stays outside (in ReducedModel.forward), so it never breaks a compiled graph. torch.compile
is lazy: the compile happens on the variant's first call, whose wall time (compile + one run) is
recorded under the variant's label in `compile_seconds` (ReducedModel.compile_seconds).
"""
from __future__ import annotations

import time

import torch


class CompiledVariant:
    def __init__(self, gm: torch.fx.GraphModule, label: str, compile_seconds: dict):
        self.label = label
        self.compile_seconds = compile_seconds
        self.fn = torch.compile(gm, fullgraph=True, dynamic=False, backend="inductor")
        self.compiled = False

    def __call__(self, **kw):
        if self.compiled:
            return self.fn(**kw)
        t0 = time.perf_counter()
        out = self.fn(**kw)
        self.compile_seconds[self.label] = time.perf_counter() - t0
        self.compiled = True
        return out


def prepare(gm, kw: dict, label: str, reduced) -> CompiledVariant:
    return CompiledVariant(gm, label, reduced.compile_seconds)
