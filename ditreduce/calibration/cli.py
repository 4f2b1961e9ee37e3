"""`ditreduce calibrate MODEL --method coredit|dito --budget B --steps N -o schedule.yaml`."""
from __future__ import annotations

import sys

from ..cli_args import float_in, output_file, positive_int
from ..schedules.ir import MAX_RATIO


def add_subcommands(sub) -> None:
    c = sub.add_parser("calibrate", help="measure a model on dense generations and write a calibrated schedule")
    c.add_argument("model", nargs="?", default="small-dit",
                   help="small-dit[:RES] or package.module:callable returning (model, example_kwargs, generate) "
                        "where generate(transformer) runs full generations through `transformer` (a spec that "
                        "cannot generate, e.g. pixart-alpha:TOKENS:BLOCKS, is a BenchModelError)")
    c.add_argument("--method", default="coredit", choices=["coredit", "dito"])
    c.add_argument("--budget", type=float_in(0.0, MAX_RATIO), default=0.45, help="coredit: fraction of self-attention FLOPs removed "
                   "(dito: the ratio and interval come from the PMR measurement, see docs/methods.md)")
    c.add_argument("--steps", type=positive_int, default=20)
    c.add_argument("--samples", type=positive_int, default=4, help="small-dit: calibration generations (classes 0..)")
    c.add_argument("--dense-fraction", type=float_in(0.0, 1.0, hi_open=True), default=0.2)
    c.add_argument("--phases", type=positive_int, default=4, help="coredit: reduced phases (one variant each)")
    c.add_argument("-o", "--out", type=output_file, default="schedule.yaml")
    c.set_defaults(fn=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from .. import compile_with_reduction
    from ..model_specs import calibration_target
    from . import allocate, measure_redundancy, write_schedule

    model, kw, generate = calibration_target(args.model, args.steps, args.samples)
    command = "ditreduce " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["calibrate"] else f"calibrate {args.model}"
    if args.method == "dito":
        from .dito import calibrate_dito

        lines = []
        doc = calibrate_dito(model, generate, args.steps, dense_fraction=args.dense_fraction, log=lines.append)
        info = {"method": "dito", "pmr": "; ".join(map(str, lines))}
    else:
        reduced = compile_with_reduction(model, {"method": "coredit", "ratio": 0.5})
        reduced.capture(**kw)
        red = measure_redundancy(reduced, lambda: generate(model), args.steps)
        doc, info = allocate(red, args.steps, args.budget, dense_fraction=args.dense_fraction, phases=args.phases)
    write_schedule(doc, info, args.out, command)
    for k, v in info.items():
        print(f"{k}: {v}")
    print(f"wrote {args.out}")
    return 0
