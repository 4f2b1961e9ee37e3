"""Quality of each method against dense on the shipped trained DiT, same seeds, same run.

    python tools/quality_table.py --seeds 6 --configs coredit@0.5 tome@0.5 uniform@0.5 todo@0.75@attention \
        docs/coredit-calibrated-small-dit.yaml

A config is METHOD@RATIO[@SCOPE[@{json params}]] (the first `--dense-fraction` of the steps dense, then that ratio; scope
default attention+proj) or a schedule file / preset. Prints PSNR and SSIM (scikit-image, mean over the
seeds, sample vs the dense sample of the same seed; class = seed mod 6), and the self+cross attention
FLOPs of the run relative to dense (from report(): equal FLOPs means an equal column).
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch

from ditreduce import compile_with_reduction
from ditreduce.smalldit.metrics import psnr, ssim
from ditreduce.smalldit.models import load_small_dit
from ditreduce.smalldit.sampling import sample


def schedule_of(cfg: str, dense_fraction: float):
    if cfg.endswith((".yaml", ".yml")) or "@" not in cfg:
        return cfg
    method, ratio, *rest = cfg.split("@", 3)
    params = json.loads(rest[1]) if len(rest) > 1 else {}
    return {"method": method, "ratio": float(ratio), "scope": rest[0] if rest else "attention+proj",
            "params": {method: params} if params else {},
            "rules": [{"step_fraction": {"start": 0.0, "stop": dense_fraction}, "method": "none"}]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--dense-fraction", type=float, default=0.2)
    ap.add_argument("--configs", nargs="+", default=["coredit@0.5", "tome@0.5", "uniform@0.5"])
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    m = load_small_dit()
    seeds = list(range(args.seeds))
    labels = [s % len(m.class_names) for s in seeds]
    dense = sample(m, labels, seeds, steps=args.steps)
    print(f"small DiT, 1024 image tokens, {args.steps} steps, CFG 3, seeds 0-{args.seeds - 1}, "
          f"first {args.dense_fraction:.0%} of steps dense")
    print("| config | PSNR dB | SSIM | attention FLOPs of the run |")
    print("|---|---|---|---|")
    for cfg in args.configs:
        reduced = compile_with_reduction(m.transformer, schedule_of(cfg, args.dense_fraction))
        with reduced.generation(num_steps=args.steps):
            imgs = sample(m, labels, seeds, steps=args.steps, transformer=reduced)
        p = sum(psnr(a, b) for a, b in zip(imgs, dense)) / len(seeds)
        s = sum(ssim(a, b) for a, b in zip(imgs, dense)) / len(seeds)
        d, r = reduced.report(num_steps=args.steps).run_flops
        print(f"| {cfg} | {p:.2f} | {s:.3f} | {r / d:.3f} |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    main()
