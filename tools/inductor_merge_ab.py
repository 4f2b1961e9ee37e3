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
import statistics
import time

import torch

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
        times = {k: [] for k in fns}
        for r in range(args.repeats):
            for k in (list(fns) if r % 2 else list(fns)[::-1]):
                t0 = time.perf_counter()
                fns[k]()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:9s} {1e3 * v:8.1f} ms per call (median of {args.repeats})")
    ratio = statistics.median(a / b for a, b in zip(times["bmm"], times["pointwise"]))
    print(f"bmm / pointwise per repeat: {ratio:.3f}; per-call speedup over dense: bmm {med['dense'] / med['bmm']:.2f}x, "
          f"pointwise {med['dense'] / med['pointwise']:.2f}x; max |bmm - pointwise| "
          f"{(outs['bmm'] - outs['pointwise']).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
