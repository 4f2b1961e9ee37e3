"""`ditreduce bench`: quality / speed / FLOPs / memory of every method on the same models in one run."""
from __future__ import annotations

import sys
import time

QUICK = dict(models=["small-dit:32"], steps=5, seeds=2, repeats=2, warmup=1, ratios="0.5")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{what}: comma-separated numbers expected, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def add_subcommands(sub) -> None:
    """Register `bench` on the `ditreduce` argparse subparsers."""
    from .runner import PREFERRED_METHODS

    b = sub.add_parser("bench", help="quality / speed / FLOPs / memory tables and plots for every method",
                       description=__doc__)
    b.add_argument("models", nargs="*", help="small-dit[:RES] | pixart-alpha:TOKENS:BLOCKS | "
                   "DiffusersClass:{json config} | package.module:callable (default: small-dit)")
    b.add_argument("--methods", default=None,
                   help=f"comma-separated (default: the registered subset of {','.join(PREFERRED_METHODS)}); "
                   "`tomesd` runs the tomesd package (the `bench` extra) as an external baseline")
    b.add_argument("--ratios", default=None, help="nominal ratios (default 0.3,0.5); with equal FLOPs on, each "
                   "method runs the ratio whose self-attention FLOPs equal a q+kv method's at the nominal ratio")
    b.add_argument("--scopes", default=None, help="comma-separated region scopes (default: attention)")
    b.add_argument("--backends", default="eager", help="comma-separated (default eager)")
    b.add_argument("--steps", type=int, default=None, help="denoising steps (default 20)")
    b.add_argument("--seeds", type=int, default=None, help="samples for PSNR / SSIM (default 6)")
    b.add_argument("--dense-fraction", type=float, default=0.2, help="first fraction of steps run dense (0.2)")
    b.add_argument("--repeats", type=int, default=None, help="interleaved timing repeats (default 5)")
    b.add_argument("--warmup", type=int, default=None, help="untimed rounds before timing (default 1)")
    b.add_argument("--guidance", type=float, default=3.0)
    b.add_argument("--res", type=int, default=64, help="small-dit pixels when no :RES is given (64 = 1024 tokens)")
    b.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    b.add_argument("--no-equal-flops", action="store_true", help="run the ratios as given for every method")
    b.add_argument("--no-quality", action="store_true", help="skip sampling (speed, FLOPs and memory only)")
    b.add_argument("--no-memory", action="store_true", help="skip the tensor-memory tracking call")
    b.add_argument("--quick", action="store_true",
                   help="CI size: small-dit at 32x32 (256 tokens), 5 steps, 2 seeds, 2 repeats, ratio 0.5")
    b.add_argument("--out", default="results", help="output folder (results.json, results.md, pareto.png, grid.png)")
    b.set_defaults(fn=cmd_bench)


def _pick(value, quick_value, default, quick: bool):
    return value if value is not None else (quick_value if quick else default)


def cmd_bench(args) -> int:
    import warnings

    import torch

    from ..schedules import ScheduleError
    from .models import BenchModelError, resolve_model
    from .report import write_outputs
    from .runner import BenchError, BenchSettings, default_methods, run_bench

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch.export's own pytree deprecation notice
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    settings = BenchSettings(
        methods=_names(args.methods) or default_methods(),
        ratios=_floats(_pick(args.ratios, QUICK["ratios"], "0.3,0.5", q), "--ratios"),
        scopes=_names(args.scopes) or ["attention"],
        backends=_names(args.backends) or ["eager"],
        steps=_pick(args.steps, QUICK["steps"], 20, q), seeds=_pick(args.seeds, QUICK["seeds"], 6, q),
        dense_fraction=args.dense_fraction, repeats=_pick(args.repeats, QUICK["repeats"], 5, q),
        warmup=_pick(args.warmup, QUICK["warmup"], 1, q), guidance=args.guidance,
        equal_flops=not args.no_equal_flops, quality=not args.no_quality, memory=not args.no_memory)
    specs = args.models or (QUICK["models"] if q else ["small-dit"])
    t0 = time.perf_counter()
    grid_rows: list = []
    try:
        models = [resolve_model(s, args.res) for s in specs]
        res = run_bench(models, settings, command=list(sys.argv), grid_rows=grid_rows)
    except (BenchError, BenchModelError, ScheduleError) as e:
        print(f"ditreduce bench: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    sampler = next((m for m in models if m.can_sample), None)
    titles = None if sampler is None else [
        f"seed {s}: {sampler.small_dit.class_names[i % len(sampler.small_dit.class_names)]}"
        for i, s in enumerate(range(settings.seeds))]
    paths = write_outputs(res, args.out, grid_rows, titles)
    from .report import markdown

    if res.equal_flops:
        print("matched ratios (equal self-attention FLOPs): " + "; ".join(
            f"{m.method}/{m.scope} ({m.reduces}) " + ", ".join(f"{k}→{v:g}" for k, v in m.ratios.items())
            for m in res.matched))
    print(markdown(res))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    return 0
