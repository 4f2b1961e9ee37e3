"""Where the `block` scope's grain comes from, measured on the trained small DiT (docs/scopes.md, "block").

Runs the shipped small DiT's blocks on a ToMe subset of their tokens by patching the modules (no compiler
pass: the probe isolates the reconstruction), dense for the first 20 % of steps, and prints the median PSNR
against dense on evaluation seeds 0..5 of:

  block  neighbour   the whole block on the kept tokens; a merged token gets its destination's block update
                     (what the `block` scope does: out = x + reconstruct(update))
  block  cache       ... gets its OWN update from the last step it was computed (a temporal cache)
  mlp    neighbour   attention dense; only the MLP on the kept tokens, merged tokens get their destination's MLP output
  mlp    cache       ... their own MLP output from the last step it was computed

    python tools/block_grain_probe.py --ratios 0.35,0.5
"""
from __future__ import annotations

import argparse
import statistics

import torch

from ditreduce.bench.quality import QualitySetup, compare, draw
from ditreduce.methods.lattice import inverse_positions
from ditreduce.methods.tome import tome_select
from ditreduce.model_specs import resolve_model
from ditreduce.regions import reduce_tokens, reconstruct_tokens


def patched(fn, part: str, mode: str, ratio: float, dense_steps: int, calls: list, cache: list):
    """A replacement forward for one block (part "block") or one block's MLP (part "mlp")."""
    def forward(x, *args, **kwargs):
        step = calls[0]
        calls[0] += 1
        if step < dense_steps:
            y = fn(x, *args, **kwargs)
            cache[0] = y - x if part == "block" else y
            return y
        n = x.shape[1]
        sel = tome_select(x, (round(n ** 0.5),) * 2, round(n * (1 - ratio)), cfg="shared")
        xr = reduce_tokens(x, sel)
        yr = fn(xr, *args, **kwargs)
        out = reconstruct_tokens(yr - xr if part == "block" else yr, sel)
        if mode == "cache":
            fresh = inverse_positions(sel.kept, n)[1][..., None] > 0
            out = cache[0] = torch.where(fresh, out, cache[0])
        return x + out if part == "block" else out
    return forward


def probe(bm, setup, dense, part: str, mode: str, ratio: float) -> float:
    blocks = bm.small_dit.transformer.transformer_blocks
    mods = list(blocks) if part == "block" else [b.ff for b in blocks]
    dense_steps = round(0.2 * setup.steps)
    saved = [m.forward for m in mods]
    try:
        for m, fn in zip(mods, saved):
            m.forward = patched(fn, part, mode, ratio, dense_steps, [0], [None])
        images = draw(bm.small_dit, setup, desc=f"{part} {mode} r={ratio:g}").images
    finally:
        for m, fn in zip(mods, saved):
            m.forward = fn
    return statistics.median(compare(images, dense)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.35,0.5")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    bm = resolve_model("small-dit")
    setup = QualitySetup(tuple(range(args.seeds)), args.steps, bm.res, 3.0)
    dense = draw(bm.small_dit, setup, desc="dense").images
    print("| reduced | merged tokens get | ratio | median PSNR dB |\n|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        for part in ("block", "mlp"):
            for mode in ("neighbour", "cache"):
                print(f"| {part} | {mode} | {ratio:g} | {probe(bm, setup, dense, part, mode, ratio):.2f} |", flush=True)


if __name__ == "__main__":
    main()
