"""Where a reduced call's time goes: torch.profiler over dense and one variant of a schedule, grouped by op and
input shape, so each op's reduced-size time can be set against its dense-size time.

    python tools/profile_variant.py small-dit docs/dito-prop-0.4-once-blocks.yaml --backend inductor

Builds the schedule's variants on the backend (the last one by default: for DiTo a `reduce` step), warms dense
and the variant up, profiles `--calls` calls of each and prints the `--rows` ops with the most self time, per
input shape. Profiler overhead inflates the small ops; time speedups with `ditreduce bench`, not with this.

Then the FLOP-proportional bound: the dense call with every FLOP-carrying op (sdpa, addmm / mm / bmm,
convolution) shrunk by its group's FLOPs ratio (group: the op and its shapes bar the token count, so a 128 × 128
projection is one group, self-attention another, a cross-attention over 4 text tokens a third), every other
op (elementwise, norms, copies) at its dense time and no region op. Its speedup over dense is what the variant
could reach if the smaller kernels ran at the dense sizes' efficiency and the region cost nothing; the
FLOPs-ideal divided by it is the part of the gap that is the model's unreduced non-FLOP time, not the region.
"""
from __future__ import annotations

import argparse
import math
import re

import torch
import torch._inductor.config as inductor_config
from torch.profiler import ProfilerActivity, profile

from ditreduce.bench.runner import Variants, compile_for
from ditreduce.model_specs import resolve_model
from ditreduce.regions import attention_flops
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
    events = []
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(3):
                fn()
        for name, fn in fns.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(args.calls):
                    fn()
            averages = prof.key_averages(group_by_input_shape=True)
            print(f"===== {name}, {args.calls} calls")
            print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50,
                                 max_shapes_column_width=90))
            events.append([(e.key, e.input_shapes, e.count / args.calls, e.self_cpu_time_total / args.calls)
                           for e in averages])
    print(format_bound(flop_bound(*events)))


def op_flops(name: str, shapes: list) -> tuple[tuple, float] | None:
    """(group, FLOPs per call) of a FLOP-carrying op from its recorded input shapes, None for any other op.
    The group is the op with its shapes bar the token count (rows of a matmul, q / kv length of attention)."""
    if name.startswith("aten::_scaled_dot_product") and len(shapes) >= 3 and len(shapes[0]) == 4:   # the kernel
        (b, h, lq, d), (_, _, lk, _), v = shapes[0], shapes[1], shapes[2]
        return ("sdpa", b, h, d, "self" if lq == lk else lk), float(attention_flops(b, h, lq, lk, d, v[-1]))
    first = {"aten::addmm": 1, "aten::mm": 0, "aten::bmm": 0}.get(name)   # addmm's first input is the bias
    if first is not None and len(shapes) >= first + 2:
        a, w = shapes[first], shapes[first + 1]   # (inductor's extern calls record their `out` after these)
        return (name, *w[-2:]), 2.0 * math.prod(a) * w[-1]
    if name.endswith("convolution") and name != "aten::convolution" and len(shapes) >= 2 and len(shapes[1]) >= 3:
        x, w = shapes[0], shapes[1]   # an upper bound (stride 1); the patch embedding is the same in both calls
        return (name, *w), 2.0 * math.prod(x[:1] + x[2:]) * math.prod(w)
    return None


def flop_bound(dense: list, variant: list) -> dict:
    """The FLOP-proportional bound (module doc) from two calls' per-op records (name, input shapes, calls,
    self µs), each per call: times in µs, FLOPs of the FLOP-carrying ops."""
    groups: dict = {}
    for which, records in ((0, dense), (1, variant)):
        for name, shapes, calls, us in records:
            name = re.sub(r"^graph_\d+_", "", name)   # inductor's kernels: graph_<n>_cpp_fused_..., n per graph
            got = op_flops(name, shapes)
            key = got[0] if got else ("other", name, str(shapes))
            g = groups.setdefault(key, [[0.0, 0.0], [0.0, 0.0]])   # [dense, variant] x [µs, FLOPs]
            g[which][0] += us
            g[which][1] += got[1] * calls if got else 0.0
    out = {"dense_us": sum(g[0][0] for g in groups.values()), "variant_us": sum(g[1][0] for g in groups.values()),
           "dense_flops": sum(g[0][1] for g in groups.values()), "variant_flops": 0.0, "bound_us": 0.0,
           "dense_other_us": 0.0, "region_us": 0.0}
    for key, ((d_us, d_fl), (v_us, v_fl)) in groups.items():
        if key[0] == "other":
            out["bound_us"] += d_us
            out["dense_other_us"] += d_us
            if d_us == 0.0:
                out["region_us"] += v_us
        elif d_fl > 0:
            out["bound_us"] += d_us * v_fl / d_fl
            out["variant_flops"] += v_fl
        else:   # a FLOP op only the variant runs: the region's (a window merge's product)
            out["region_us"] += v_us
    return out


def format_bound(b: dict) -> str:
    ideal = b["dense_flops"] / b["variant_flops"]
    bound = b["dense_us"] / b["bound_us"]
    return "\n".join([
        "===== FLOP-proportional bound, per call (times under the profiler)",
        f"dense {b['dense_us'] / 1e3:.1f} ms, variant {b['variant_us'] / 1e3:.1f} ms: "
        f"{b['dense_us'] / b['variant_us']:.2f}x",
        f"FLOPs-ideal (the profiled ops' FLOPs) {ideal:.2f}x; the FLOP-proportional bound {bound:.2f}x, "
        f"{bound / ideal:.2f} of the ideal",
        f"dense time in ops without FLOPs (elementwise, norms, copies): {b['dense_other_us'] / 1e3:.1f} ms "
        f"({b['dense_other_us'] / b['dense_us']:.0%}); variant time in ops or shapes the dense call does not run "
        f"(the region's, and copies at the reduced size): {b['region_us'] / 1e3:.1f} ms",
        f"measured: {b['dense_us'] / b['variant_us'] / ideal:.2f} of the ideal, "
        f"{b['dense_us'] / b['variant_us'] / bound:.2f} of the bound"])


if __name__ == "__main__":
    main()
