"""`ditreduce` command line: demo, inspect, presets, schema (and bench, export, check-tensorrt, build-engines,
calibrate, zoo from their subpackages)."""
from __future__ import annotations

import importlib
import sys
import time

from .cli_args import (MODEL_SPEC_HELP, USER_PATH_ERRORS, OneLineParser, finite_float, output_file, positive_int,
                       print_error, traceback_wanted)
from .errors import BenchModelError, DitreduceError


def cmd_inspect(args) -> int:
    import torch

    from . import compile_with_reduction
    from .model_specs import resolve_model

    bm = resolve_model(args.model, args.res)
    reduced = compile_with_reduction(bm.module, args.schedule)
    with torch.no_grad():
        reduced.capture(**bm.kwargs)
    rep = reduced.report(num_steps=args.steps)
    for note in rep.notes:
        print(f"# {note}")
    print(rep)
    return 0


def cmd_demo(args) -> int:
    """Dense next to the best registered method's default schedule (`--schedule auto`) or the one given."""
    import torch

    from . import compile_with_reduction
    from .bench.flops import count_flops
    from .bench.progress import progress_bar
    from .bench.runner import Variants, flops_record
    from .methods import preferred_methods
    from .schedules import default_schedule
    from .model_specs import resolve_model
    from .smalldit.metrics import psnr, ssim
    from .smalldit.sampling import sample

    b2 = 2 * args.samples if args.guidance != 1.0 else args.samples  # the batch of the sampling calls (CFG)
    bm = resolve_model(args.model, args.res, batch=b2)
    if not bm.can_sample:
        raise BenchModelError(f"demo samples images and compares them, so it needs small-dit[:RES]; {args.model!r} "
                              "cannot sample (`ditreduce inspect` and `ditreduce bench --no-quality` take any model)")
    args.res = bm.res
    model, example = bm.small_dit, bm.kwargs
    schedule, name = args.schedule, args.schedule
    if schedule == "auto":  # the best method (in the bench's order of preference) with its default schedule
        best = preferred_methods()[0]
        schedule = default_schedule(best)
        name = schedule if isinstance(schedule, str) else f"{best} 0.5, first 20% dense"
    torch.manual_seed(0)
    n = args.samples
    labels = [i % len(model.class_names) for i in range(n)]
    seeds = list(range(args.seed, args.seed + n))

    def run(net, desc):
        bar = progress_bar(total=args.steps, desc=desc, leave=False)
        t0 = time.perf_counter()
        imgs = sample(model, labels, seeds, res=args.res, steps=args.steps, guidance=args.guidance,
                      transformer=net, progress=lambda i: bar.update(1))
        bar.close()
        return imgs, time.perf_counter() - t0

    reduced_model = compile_with_reduction(model.transformer, schedule)
    # capture (torch.export), every variant built and called once, and a dense warm-up: outside the timed runs;
    # the example has the very signature the sampling calls use (batch b2, random inputs)
    with torch.no_grad():
        variants = Variants(reduced_model, example, args.steps)
        dense_flops = count_flops(lambda: model.transformer(**example))  # also the dense warm-up
        per_variant = [count_flops(variants.caller(v)) for v in range(len(variants.keys))]
    fl, _ = flops_record(dense_flops, per_variant, variants.per_step)  # whole run, FlopCounterMode
    dense, t_dense = run(None, "dense")
    with reduced_model.generation(num_steps=args.steps):
        red, t_red = run(reduced_model, "reduced")
    if len(reduced_model.captures) > 1:  # a capture inside the timed run would count its export time
        print("warning: the sampling calls captured a new input signature; the timing includes it", file=sys.stderr)
    ps = sum(psnr(a, b) for a, b in zip(red, dense)) / n
    ss = sum(ssim(a, b) for a, b in zip(red, dense)) / n
    speedup = t_dense / t_red
    tokens = (args.res // 2) ** 2
    print(f"{n} samples, {args.res}x{args.res} ({tokens} image tokens), {args.steps} steps, CFG {args.guidance}")
    print(f"{'run':32} {'wall s':>8} {'speedup':>8} {'attn FLOPs':>11} {'FLOPs':>6} {'PSNR dB':>8} {'SSIM':>6}")
    print(f"{'dense':32} {t_dense:8.2f} {1.0:8.2f}x {1.0:11.3f} {1.0:6.3f} {'-':>8} {'-':>6}")
    print(f"{name:32} {t_red:8.2f} {speedup:8.2f}x {fl.attention_ratio:11.3f} {fl.whole_ratio:6.3f} {ps:8.2f} {ss:6.3f}")
    print("(FLOPs: whole run relative to dense, torch.utils.flop_counter; attention = every sdpa, self + cross; "
          f"FLOPs-ideal speedup {fl.ideal_speedup:.2f}x)")
    if tokens <= 1024 and speedup < 1.1:
        print(f"note: at {tokens} image tokens there is no real wall-time gain on this CPU ({speedup:.2f}x): attention "
              "is a small part of the time, and the linears and MLPs this scope leaves alone dominate. The gain "
              "grows with the token count: see the 4096- and 16384-token speed tables in docs/benchmarks.md "
              "(`ditreduce bench pixart-alpha:4096:2 --no-quality`).")
    _save_grid([dense, red], args.out)
    print(f"wrote {args.out} (top: dense, bottom: {name})")
    return 0


def _save_grid(rows, path):
    import numpy as np
    from PIL import Image

    from .smalldit.metrics import to_unit

    grid = np.concatenate([np.concatenate([to_unit(img) for img in row], axis=1) for row in rows], axis=0)
    Image.fromarray((grid * 255).round().astype("uint8")).resize(
        (grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


# every subcommand comes from an `add_subcommands(sub)` of one of these modules, in this order
SUBCOMMAND_MODULES = ("ditreduce.cli", "ditreduce.bench.cli", "ditreduce.backends.cli", "ditreduce.calibration.cli",
                      "ditreduce.calibration.tune", "ditreduce.zoo")


def add_subcommands(sub) -> None:
    """demo, inspect, presets, schema."""
    d = sub.add_parser("demo", help="dense vs reduced samples of the shipped small DiT: speed, FLOPs, PSNR, SSIM")
    d.add_argument("model", nargs="?", default="small-dit", help="small-dit[:RES] (a model that samples images)")
    d.add_argument("--samples", type=positive_int, default=4)
    d.add_argument("--steps", type=positive_int, default=20)
    d.add_argument("--res", type=positive_int, default=64, help="pixels (small-dit:RES overrides it)")
    d.add_argument("--guidance", type=finite_float, default=3.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--schedule", default="auto", help="a schedule or preset; auto: the best registered method's default")
    d.add_argument("--out", type=output_file, default="ditreduce_demo.png")
    d.set_defaults(fn=cmd_demo)
    i = sub.add_parser("inspect", help="sites, layouts and per-step plan of a model under a schedule")
    i.add_argument("model", nargs="?", default="small-dit", help=MODEL_SPEC_HELP)
    i.add_argument("--schedule", default="uniform-50")
    i.add_argument("--steps", type=positive_int, default=None, help="number of denoising steps (for step rules)")
    i.add_argument("--res", type=positive_int, default=64, help="small-dit's resolution when the spec has none")
    i.set_defaults(fn=cmd_inspect)
    p = sub.add_parser("presets", help="list the shipped schedule presets")
    p.set_defaults(fn=lambda a: print("\n".join(__import__("ditreduce.schedules", fromlist=["presets"]).presets())) or 0)
    s = sub.add_parser("schema", help="print the JSON schema of the schedule format")
    s.set_defaults(fn=lambda a: print(__import__("ditreduce.schedules", fromlist=["json_schema"]).json_schema()) or 0)


def main(argv=None) -> int:
    ap = OneLineParser(prog="ditreduce", description=__doc__)
    ap.add_argument("--traceback", action="store_true",
                    help="show the traceback of a ditreduce error (also: DITREDUCE_TRACEBACK=1)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_subcommands(sub)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (DitreduceError, *USER_PATH_ERRORS) as e:  # a refused request or a path that cannot be read or
        if traceback_wanted(args):                       # written: one line, exit 2 (a bug keeps its traceback)
            raise
        return print_error(e)


if __name__ == "__main__":
    sys.exit(main())
