"""Quality with proportional attention on and off, on the shipped trained DiT (same seeds, same run).

    python tools/prop_attn_quality.py --seeds 6 --steps 20 --methods coredit,tome,dito --ratios 0.3,0.5

Each (method, ratio) runs in `--scope` (default attention+proj, the bench's quality mode) with the first
`--dense-fraction` of the steps dense, once with `prop_attn: false` and once with `prop_attn: true`.
Prints PSNR / SSIM against the dense sample of the same seed: median over the seeds (as the bench), the
mean and the worst seed.
"""
from __future__ import annotations

import argparse
import statistics
import warnings

from ditreduce import compile_with_reduction
from ditreduce.smalldit.metrics import psnr, ssim
from ditreduce.smalldit.models import load_small_dit
from ditreduce.smalldit.sampling import sample


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dense-fraction", type=float, default=0.2)
    ap.add_argument("--methods", default="coredit,tome,dito")
    ap.add_argument("--ratios", default="0.3,0.5")
    ap.add_argument("--scope", default="attention+proj")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    m = load_small_dit()
    seeds = list(range(args.seeds))
    labels = [s % len(m.class_names) for s in seeds]
    dense = sample(m, labels, seeds, steps=args.steps)
    print(f"small DiT, 1024 image tokens, {args.steps} steps, CFG 3, seeds 0-{args.seeds - 1}, first "
          f"{args.dense_fraction:.0%} of steps dense, scope {args.scope}")
    print("| method | ratio | prop_attn | PSNR dB median (mean, min) | SSIM median (min) |")
    print("|---|---|---|---|---|")
    for method in args.methods.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            for prop in (False, True):
                sched = {"method": method, "ratio": ratio, "scope": args.scope, "prop_attn": prop,
                         "rules": [{"step_fraction": {"start": 0.0, "stop": args.dense_fraction}, "method": "none"}]}
                reduced = compile_with_reduction(m.transformer, sched)
                with reduced.generation(num_steps=args.steps):
                    imgs = sample(m, labels, seeds, steps=args.steps, transformer=reduced)
                p = [psnr(a, b) for a, b in zip(imgs, dense)]
                s = [ssim(a, b) for a, b in zip(imgs, dense)]
                print(f"| {method} | {ratio:g} | {'on' if prop else 'off'} | {statistics.median(p):.2f} "
                      f"({statistics.mean(p):.2f}, {min(p):.2f}) | {statistics.median(s):.3f} ({min(s):.3f}) |",
                      flush=True)


if __name__ == "__main__":
    main()
