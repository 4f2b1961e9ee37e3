"""A/B of the two forms the inductor backend can trace a reduced variant's merges in (regions.pointwise_products).

    python tools/inductor_merge_ab.py small-dit docs/dito-prop-0.6.yaml --repeats 25

Builds the schedule's most reduced variant twice on `inductor` — once with the merges and slot sums as batched
matrix products (`bmm`, what eager / ONNX / TensorRT run), once as products and sums inductor fuses with their
gathers (`pointwise`, what the backend does) — and the dense model under torch.compile, then times the three in
one interleaved loop (alternating order each repeat). Prints the median seconds per call, the median per-repeat
ratio bmm / pointwise and each form's per-call speedup over dense, and the largest output difference.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from ab_timing import report, time_interleaved

import ditreduce.backends.inductor as inductor
from ditreduce.bench.runner import Variants, compile_for
from ditreduce.model_specs import resolve_model
from ditreduce.schedules import load_schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bench model spec (small-dit, pixart-alpha:4096:2, ...)")
    ap.add_argument("schedule", help="a schedule file or preset")
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    bm, sched = resolve_model(args.model), load_schedule(args.schedule)
    forms = {"bmm": contextlib.nullcontext, "pointwise": inductor.pointwise_products}
    fns, outs = {}, {}
    with torch.no_grad():
        for name, ctx in forms.items():
            inductor.pointwise_products = ctx   # the context the backend traces its variants in
            try:
                run = Variants(compile_for(bm.module, sched, "inductor"), bm.kwargs, args.steps)
                fns[name] = run.caller(len(run.keys) - 1)
                out = fns[name]()
            finally:
                inductor.pointwise_products = forms["pointwise"]
            outs[name] = out[0] if isinstance(out, tuple) else out
        dense = torch.compile(bm.module)
        dense(**bm.kwargs)
        fns["dense"] = lambda: dense(**bm.kwargs)
        times = time_interleaved(fns, args.repeats)
    report(times, outs, "bmm", "pointwise", "")


if __name__ == "__main__":
    main()
