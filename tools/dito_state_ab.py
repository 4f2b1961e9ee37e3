"""A/B of what a DiTo step after its matching carries as state, timed on the schedule's last variant.

    python tools/dito_state_ab.py small-dit docs/dito-prop-0.6.yaml --backend inductor --repeats 25
    python tools/dito_state_ab.py small-dit docs/dito-prop-0.65-once-blocks.yaml --backend eager --tail

Default: the Selection read from state (`stored`, what the method does) against one
rebuilt from the matching's pairs inside the graph every step (`rebuilt`: `dito.state_names` patched to carry
only the pairs, so the graph runs dito_selection). `--tail`: a `tail` step (`tail`: no `y` / `count` carried,
no refresh; what the plan gives a step no later matching reads) against the `reduce` step it replaces
(`reduce`: the plan's liveness off, `dito._tail_steps` patched to the identity).

Builds the last variant twice on the backend, and the dense model (under torch.compile for inductor), then
times the three in one interleaved loop (alternating order each repeat). Prints the median seconds per call,
the median per-repeat ratio of the two forms, each form's per-call speedup over dense, and the largest output
difference.
"""
from __future__ import annotations

import argparse
import contextlib
from unittest import mock

import torch
from ab_timing import report, time_interleaved

import ditreduce.methods.dito as dito
from ditreduce.bench.runner import Variants, compile_for
from ditreduce.model_specs import resolve_model
from ditreduce.schedules import load_schedule


def _pairs_only(phase: str, merges: bool):
    return _STATE_NAMES(phase, False)


_STATE_NAMES = dito.state_names
FORMS = {  # comparison -> ((form, patch or None, phase its last variant has), ...), the ratio first / second
    "selection": (("rebuilt", ("state_names", _pairs_only), None), ("stored", None, None)),
    "tail": (("reduce", ("_tail_steps", lambda column: column), "reduce"), ("tail", None, "tail")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bench model spec (small-dit, pixart-alpha:4096:2, ...)")
    ap.add_argument("schedule", help="a schedule file or preset with a dito run")
    ap.add_argument("--backend", default="inductor", choices=("eager", "inductor"))
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tail", action="store_true", help="compare a tail step with the reduce step it replaces")
    args = ap.parse_args()
    bm, sched = resolve_model(args.model), load_schedule(args.schedule)
    forms = FORMS["tail" if args.tail else "selection"]
    fns, outs = {}, {}
    with torch.no_grad():
        for name, patch, phase in forms:
            with mock.patch.object(dito, *patch) if patch else contextlib.nullcontext():
                run = Variants(compile_for(bm.module, sched, args.backend), bm.kwargs, args.steps)
                last = str(run.keys[-1])
                want = (phase,) if phase else ("reduce", "tail")
                assert any(f"'{p}'" in last for p in want), f"the schedule's last variant is not a dito {want} step: {last}"
                fns[name] = run.caller(len(run.keys) - 1)
                out = run.call_in_step_order(len(run.keys) - 1)   # prime → match → reduce / tail: the real state
            outs[name] = out[0] if isinstance(out, tuple) else out
        dense = torch.compile(bm.module) if args.backend == "inductor" else bm.module
        dense(**bm.kwargs)
        fns["dense"] = lambda: dense(**bm.kwargs)
        times = time_interleaved(fns, args.repeats)
    report(times, outs, forms[0][0], forms[1][0], f"{args.backend}: ")


if __name__ == "__main__":
    main()
