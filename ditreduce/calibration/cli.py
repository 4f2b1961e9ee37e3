"""`ditreduce calibrate MODEL --method coredit|dito --budget B --steps N -o schedule.yaml`."""
from __future__ import annotations

import sys

from ..cli_args import float_in, positive_int


def add_subcommands(sub) -> None:
    c = sub.add_parser("calibrate", help="measure a model on dense generations and write a calibrated schedule")
    c.add_argument("model", nargs="?", default="small-dit",
                   help="'small-dit' or 'package.module:function' returning (model, example_kwargs, generate) "
                        "where generate(transformer) runs full generations through `transformer`")
    c.add_argument("--method", default="coredit", choices=["coredit", "dito"])
    c.add_argument("--budget", type=float_in(0.0, 0.95), default=0.45, help="coredit: fraction of self-attention FLOPs removed "
                   "(dito: the ratio and interval come from the PMR measurement, see docs/methods.md)")
    c.add_argument("--steps", type=positive_int, default=20)
    c.add_argument("--samples", type=positive_int, default=4, help="small-dit: calibration generations (classes 0..)")
    c.add_argument("--dense-fraction", type=float_in(0.0, 1.0, hi_open=True), default=0.2)
    c.add_argument("--phases", type=positive_int, default=4, help="coredit: reduced phases (one variant each)")
    c.add_argument("-o", "--out", default="schedule.yaml")
    c.set_defaults(fn=cmd_calibrate)


def _target(spec: str, steps: int, samples: int):
    import torch

    if spec == "small-dit":
        from ..smalldit.models import load_small_dit
        from ..smalldit.sampling import sample

        m = load_small_dit()
        labels = [i % len(m.class_names) for i in range(samples)]
        kw = dict(hidden_states=torch.zeros(2 * samples, 3, 64, 64),
                  encoder_hidden_states=torch.zeros(2 * samples, 4, m.captions.channels),
                  timestep=torch.zeros(2 * samples), return_dict=False)
        # seeds 1000+: calibration never sees the seeds the benchmarks evaluate on
        return m.transformer, kw, lambda net: sample(m, labels, range(1000, 1000 + samples), steps=steps, transformer=net)
    from ..cli import load_callable

    return load_callable(spec, "(model, example_kwargs, generate)")()


def cmd_calibrate(args) -> int:
    from .. import compile_with_reduction
    from . import allocate, measure_redundancy, write_schedule

    model, kw, generate = _target(args.model, args.steps, args.samples)
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
