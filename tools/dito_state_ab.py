"""A/B of how a DiTo `reduce` step gets its Selection: read from state (what the method does) or rebuilt from the
matching's pairs (merged, unmerged, arg) inside the variant graph, every step.

    python tools/dito_state_ab.py small-dit docs/dito-prop-0.6.yaml --backend inductor --repeats 25

Builds the schedule's last variant (a `reduce` step) twice on the backend — with the Selection as state
(`stored`), and with `dito.state_names` patched to carry only the pairs (`rebuilt`: the graph runs
dito_selection) — and the dense model (under torch.compile for inductor), then times the three in one
interleaved loop (alternating order each repeat). Prints the median seconds per call, the median per-repeat
ratio rebuilt / stored, each form's per-call speedup over dense, and the largest output difference.
"""
from __future__ import annotations

import argparse

import torch
from ab_timing import report, time_interleaved

import ditreduce.methods.dito as dito
from ditreduce.bench.runner import Variants, compile_for
from ditreduce.model_specs import resolve_model
from ditreduce.schedules import load_schedule


def _pairs_only(phase: str, merges: bool):
    return _stored(phase, False)


_stored = dito.state_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bench model spec (small-dit, pixart-alpha:4096:2, ...)")
    ap.add_argument("schedule", help="a schedule file or preset with a dito run")
    ap.add_argument("--backend", default="inductor", choices=("eager", "inductor"))
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    bm, sched = resolve_model(args.model), load_schedule(args.schedule)
    fns, outs = {}, {}
    with torch.no_grad():
        for name, names in (("stored", _stored), ("rebuilt", _pairs_only)):
            dito.state_names = names
            try:
                run = Variants(compile_for(bm.module, sched, args.backend), bm.kwargs, args.steps)
                assert "reduce" in str(run.keys[-1]), f"the schedule's last variant is not a dito reduce step: {run.keys[-1]}"
                fns[name] = run.caller(len(run.keys) - 1)
                out = run.call_in_step_order(len(run.keys) - 1)   # prime → match → reduce: the real state
            finally:
                dito.state_names = _stored
            outs[name] = out[0] if isinstance(out, tuple) else out
        dense = torch.compile(bm.module) if args.backend == "inductor" else bm.module
        dense(**bm.kwargs)
        fns["dense"] = lambda: dense(**bm.kwargs)
        times = time_interleaved(fns, args.repeats)
    report(times, outs, "rebuilt", "stored", f"{args.backend}: ")


if __name__ == "__main__":
    main()
