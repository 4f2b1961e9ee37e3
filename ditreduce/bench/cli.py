"""`ditreduce bench`: quality / speed / FLOPs / memory of every method on the same models in one run."""
from __future__ import annotations

import sys
import time

from ..cli_args import count, finite_float, float_in, float_list, name_list, output_file, output_folder, positive_int
from ..schedules.ir import MAX_RATIO

QUICK = dict(models=["small-dit:32"], steps=5, seeds=2, repeats=2, warmup=1, ratios=[0.5])


def _names(text: str) -> list[str]:
    """Method names; which exist is the registry's to say at run time (runner.validate: a BenchError)."""
    return [x.strip() for x in text.split(",") if x.strip()]


def add_subcommands(sub) -> None:
    """Register `bench` on the `ditreduce` argparse subparsers."""
    from ..backends import BACKENDS, INDUCTOR_MODES
    from .runner import default_methods, known_scopes

    b = sub.add_parser("bench", help="quality / speed / FLOPs / memory tables and plots for every method",
                       description=__doc__)
    b.add_argument("models", nargs="*", help="small-dit[:RES] | pixart-alpha:TOKENS:BLOCKS | "
                   "DiffusersClass:{json config} | package.module:callable (default: small-dit)")
    b.add_argument("--methods", type=_names, default=None,
                   help=f"comma-separated (default: every registered method, {','.join(default_methods())}); "
                   "`tomesd` runs the tomesd package (the `bench` extra) as an external baseline")
    b.add_argument("--ratios", type=float_list(0.0, MAX_RATIO), default=None, help="nominal ratios (default 0.3,0.5); with equal FLOPs on, each "
                   "method runs the ratio whose self-attention FLOPs equal a q+kv method's at the nominal ratio")
    b.add_argument("--scopes", type=name_list(known_scopes), default=None, help="comma-separated region scopes (default: attention)")
    b.add_argument("--backends", type=name_list(BACKENDS), default=["eager"],
                   help=f"comma-separated, of {','.join(BACKENDS)} (default eager); each is timed in its own "
                   "interleaved loop and compared with eager's outputs")
    b.add_argument("--schedule", action="append", default=[], metavar="FILE.yaml",
                   help="a schedule file or preset run as written, as one more configuration named by the file "
                   "(repeatable; not FLOPs-matched). Without --methods only the schedules run")
    b.add_argument("--params", action="append", default=[], type=_params, metavar="SET",
                   help="a parameter set: method.key=value (a method parameter) or key=value (a schedule field, "
                   "e.g. prop_attn=true), comma-joined; repeated, each set is one more configuration of the "
                   "methods it names, e.g. --params prop_attn=false --params prop_attn=true, or "
                   "--params dito.interval=2,dito.lam=0.3")
    b.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N: the model, its inputs and "
                   "the timing (CUDA events) and memory (peak CUDA allocation) on that device")
    b.add_argument("--inductor-mode", default="default", choices=list(INDUCTOR_MODES),
                   help="torch.compile mode of the inductor backend and its dense baseline (reduce-overhead: CUDA "
                   "graphs on a GPU; a stateful method (dito) is refused there and listed as a named error)")
    b.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="model and input dtype (timesteps stay fp32; default fp32)")
    b.add_argument("--steps", type=positive_int, default=None, help="denoising steps (default 20)")
    b.add_argument("--seeds", type=positive_int, default=None, help="samples for PSNR / SSIM (default 6)")
    b.add_argument("--first-seed", type=count, default=0,
                   help="the samples' seeds are first-seed … first-seed + seeds − 1 (default 0; `tune` calibrates on "
                   "1000 and above, so --first-seed 1000 shows a schedule on the seeds it was tuned on)")
    b.add_argument("--dense-fraction", type=float_in(0.0, 1.0, hi_open=True), default=0.2,
                   help="first fraction of steps run dense (0.2)")
    b.add_argument("--repeats", type=positive_int, default=None, help="interleaved timing repeats (default 5)")
    b.add_argument("--warmup", type=count, default=None, help="untimed rounds before timing (default 1)")
    b.add_argument("--guidance", type=finite_float, default=3.0)
    b.add_argument("--res", type=positive_int, default=64, help="small-dit pixels when no :RES is given (64 = 1024 tokens)")
    b.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    b.add_argument("--no-equal-flops", action="store_true", help="run the ratios as given for every method")
    b.add_argument("--no-quality", action="store_true", help="skip sampling (speed, FLOPs and memory only)")
    b.add_argument("--no-memory", action="store_true", help="skip the tensor-memory tracking call")
    b.add_argument("--quick", action="store_true",
                   help="CI size: small-dit at 32x32 (256 tokens), 5 steps, 2 seeds, 2 repeats, ratio 0.5")
    b.add_argument("--out", type=output_folder, default="results",
                   help="output folder (results.json, results.md, pareto.png, grid.png)")
    _docs_args(b, "--update-docs", "also rewrite the block `<!-- bench:NAME -->` … `<!-- /bench:NAME -->` "
               "of this markdown file from the results (appended when absent)")
    b.set_defaults(fn=cmd_bench)

    d = sub.add_parser("bench-docs", help="rewrite a marked table block of a docs page from a bench results.json",
                       description="Rewrite the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` of a "
                       "markdown file (appended when absent) from a `ditreduce bench` results.json: the command, "
                       "machine and date, then the tables.")
    d.add_argument("results", help="results.json written by `ditreduce bench`")
    _docs_args(d, "markdown", "the markdown file to rewrite")
    d.set_defaults(fn=cmd_bench_docs)


def _docs_args(p, target: str, help: str) -> None:
    from .results import TABLES

    optional = {"default": None, "metavar": "FILE.md"} if target.startswith("-") else {}
    p.add_argument(target, type=output_file, help=help, **optional)
    p.add_argument("--block", default=None, help="NAME of the block (default: the results folder's name)")
    p.add_argument("--tables", type=name_list(TABLES), default=list(TABLES),
                   help=f"comma-separated tables of the block, of {','.join(TABLES)} (default all)")


def _params(text: str) -> dict:
    import argparse

    from .runner import BenchError, parse_params

    try:
        return parse_params(text)
    except BenchError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_bench_docs(args) -> int:
    from pathlib import Path

    from ..errors import BenchError
    from .results import BenchResults, update_docs

    path = Path(args.results)
    if not path.is_file():
        raise BenchError(f"results {args.results!r}: no such file; `ditreduce bench --out DIR` writes DIR/results.json")
    try:
        res = BenchResults.load(path)
    except ValueError as e:   # not JSON, or not the results schema (pydantic's ValidationError is a ValueError)
        first = str(e).strip().splitlines()[0]
        raise BenchError(f"results {args.results!r}: not a results.json written by `ditreduce bench` ({first}); "
                         "pass DIR/results.json of a `ditreduce bench --out DIR` run") from None
    name = args.block or path.resolve().parent.name
    replaced = update_docs(args.markdown, name, res, args.tables)
    print(f"{'rewrote' if replaced else 'appended'} block bench:{name} in {args.markdown}")
    return 0


def _pick(value, quick_value, default, quick: bool):
    return value if value is not None else (quick_value if quick else default)


def cmd_bench(args) -> int:
    import warnings

    import torch

    from .models import resolve_model
    from .results import write_outputs
    from .runner import BenchSettings, default_methods, run_bench

    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch.export's own pytree deprecation notice
    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    settings = BenchSettings(
        methods=args.methods or default_methods(),
        ratios=_pick(args.ratios, QUICK["ratios"], [0.3, 0.5], q),
        scopes=args.scopes or ["attention"],
        backends=args.backends,
        steps=_pick(args.steps, QUICK["steps"], 20, q), seeds=_pick(args.seeds, QUICK["seeds"], 6, q),
        first_seed=args.first_seed,
        dense_fraction=args.dense_fraction, repeats=_pick(args.repeats, QUICK["repeats"], 5, q),
        warmup=_pick(args.warmup, QUICK["warmup"], 1, q), guidance=args.guidance,
        equal_flops=not args.no_equal_flops, quality=not args.no_quality, memory=not args.no_memory,
        device=args.device, dtype=args.dtype, inductor_mode=args.inductor_mode, params=args.params,
        schedules=args.schedule)
    if args.schedule and not args.methods:
        settings.methods = []
    specs = args.models or (QUICK["models"] if q else ["small-dit"])
    t0 = time.perf_counter()
    grid_rows: list = []
    models = [resolve_model(s, args.res) for s in specs]  # a DitreduceError: one line, exit 2 (ditreduce.cli.main)
    res = run_bench(models, settings, command=list(sys.argv), grid_rows=grid_rows)
    sampler = next((m for m in models if m.can_sample), None)
    titles = None if sampler is None else [
        f"seed {s}: {sampler.small_dit.class_names[i % len(sampler.small_dit.class_names)]}"
        for i, s in enumerate(settings.quality_seeds)]
    paths = write_outputs(res, args.out, grid_rows, titles)
    from .results import markdown

    if res.equal_flops:
        print("matched ratios (equal self-attention FLOPs): " + "; ".join(
            f"{m.method}/{m.scope} ({m.reduces}) " + ", ".join(f"{k}→{v:g}" for k, v in m.ratios.items())
            for m in res.matched))
    print(markdown(res))
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    if args.update_docs:
        from pathlib import Path

        from .results import update_docs

        name = args.block or Path(args.out).resolve().name
        replaced = update_docs(args.update_docs, name, res, args.tables)
        print(f"{'rewrote' if replaced else 'appended'} block bench:{name} in {args.update_docs}")
    return 0
