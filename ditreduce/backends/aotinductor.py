"""aotinductor: each variant graph compiled ahead of time by AOTInductor into a .pt2 package and loaded back.

The variant is re-exported to plain ATen (backends.programs.export_program, as for `inductor`), compiled by
torch._inductor.aoti_compile_and_package into a package under a temporary folder kept while the variant
lives, and run by the loaded package (the C++ runner: no Python in the call). Compilation happens on the
variant's first call, whose wall time (export + compile + load + one run) ReducedModel.compile_seconds lists.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ..passes.capture import quiet_export_warnings
from ..regions import pointwise_products
from .programs import export_program


class AotVariant:
    def __init__(self, gm: torch.fx.GraphModule, label: str):
        self.gm, self.label = gm, label
        self.compile_seconds: float | None = None   # export + AOT compile + load + first run
        self.fn = None
        self._dir = None

    def __call__(self, **kw):
        if self.fn is not None:
            return self.fn(**kw)
        t0 = time.perf_counter()
        with pointwise_products():   # as for `inductor` (regions.pointwise_products)
            ep = export_program(self.gm, kw)
        self._dir = tempfile.TemporaryDirectory(prefix="ditreduce-aoti-")
        with quiet_export_warnings():   # the compile copies the program: torch's own LeafSpec notice
            pkg = torch._inductor.aoti_compile_and_package(ep, package_path=str(Path(self._dir.name) / "variant.pt2"))
            self.fn = torch._inductor.aoti_load_package(pkg)
        out = self.fn(**kw)
        self.compile_seconds = time.perf_counter() - t0
        return out


def prepare(gm, kw: dict, label: str, options) -> AotVariant:
    return AotVariant(gm, label)
