"""Where a reduced call's time goes: torch.profiler over dense and one variant of a schedule, grouped by op and
input shape, so each op's reduced-size time can be set against its dense-size time.

    python tools/profile_variant.py small-dit docs/dito-prop-0.4-once-blocks.yaml --backend inductor

Builds the schedule's variants on the backend (the last one by default: for DiTo a `reduce` step), warms dense
and the variant up, profiles `--calls` calls of each and prints the `--rows` ops with the most self time, per
input shape. Profiler overhead inflates the small ops; time speedups with `ditreduce bench`, not with this.
"""
from __future__ import annotations

import argparse

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from ditreduce.bench.runner import Variants, compile_for
from ditreduce.model_specs import resolve_model
from ditreduce.schedules import load_schedule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bench model spec (small-dit, pixart-alpha:4096:2, ...)")
    ap.add_argument("schedule", help="a schedule file or preset")
    ap.add_argument("--backend", default="inductor", choices=("eager", "inductor"))
    ap.add_argument("--variant", type=int, default=-1, help="index of the variant in the run's plan (default: last)")
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    inductor_config.cpp.enable_kernel_profile = True   # inductor's generated kernels appear by name
    bm, sched = resolve_model(args.model), load_schedule(args.schedule)
    run = Variants(compile_for(bm.module, sched, args.backend), bm.kwargs, args.steps)
    variant = args.variant % len(run.keys)
    dense = torch.compile(bm.module) if args.backend == "inductor" else bm.module
    fns = {"dense": lambda: dense(**bm.kwargs), f"variant {variant} of {len(run.keys)}": run.caller(variant)}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for name, fn in fns.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(args.calls):
                    fn()
            print(f"===== {name}, {args.calls} calls")
            print(prof.key_averages(group_by_input_shape=True).table(
                sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50,
                max_shapes_column_width=90))


if __name__ == "__main__":
    main()
