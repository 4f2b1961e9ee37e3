"""Where the `block` scope's grain comes from, measured on the trained small DiT (docs/scopes.md, "block").

Runs the shipped small DiT's blocks on a ToMe subset of their tokens by patching the modules (no compiler
pass: the probe isolates the reconstruction), dense for the first 20 % of steps, and prints the median PSNR
against dense on seeds --seed0 .. --seed0 + 5 (default the evaluation seeds 0..5) of:

  block  neighbour   the whole block on the kept tokens; a merged token gets its destination's block update
                     (what the `block` scope does: out = x + reconstruct(update))
  block  cache       ... gets its OWN update from the last step it was computed (a temporal cache)
  mlp    neighbour   attention dense; only the MLP on the kept tokens, merged tokens get their destination's MLP output
  mlp    cache       ... their own MLP output from the last step it was computed
  cross  neighbour   only the cross-attention's queries on the kept tokens (self-attention and MLP dense),
                     merged tokens get their destination's cross-attention output
  cross  cache       ... their own cross-attention output from the last step it was computed

    python tools/block_grain_probe.py --ratios 0.35,0.5                       # block, mlp
    python tools/block_grain_probe.py --parts cross --ratios 0.6 --seed0 1000  # on calibration seeds
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


PARTS = {"block": None, "mlp": "ff", "cross": "attn2"}   # part -> the block's submodule patched


def patched(fn, part: str, mode: str, ratio: float, dense_steps: int, calls: list, cache: list):
    """A replacement forward for one block (part "block"), one block's MLP ("mlp") or its cross-attention
    ("cross": the module's first argument, its queries' input, is what is reduced)."""
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
    mods = list(blocks) if part == "block" else [getattr(b, PARTS[part]) for b in blocks]
    dense_steps = max(1, round(0.2 * setup.steps))   # cache mode reuses a dense step's output: at least one
    saved = [m.forward for m in mods]
    try:
        for m, fn in zip(mods, saved):
            m.forward = patched(fn, part, mode, ratio, dense_steps, [0], [None])
        images = draw(bm.small_dit, setup, desc=f"{part} {mode} r={ratio:g}").images
    finally:
        for m, fn in zip(mods, saved):
            m.forward = fn
    return statistics.median(compare(images, dense)[0])


def time_shares(bm, repeats: int = 10) -> dict[str, float]:
    """Share of a dense eager call spent in each block submodule (norm1, attn1, norm2, attn2, ff), timed by
    forward hooks over `repeats` calls after 3 warm-up calls."""
    import time

    spent: dict[str, float] = {}
    hooks = []
    for blk in bm.module.transformer_blocks:
        for name in ("norm1", "attn1", "norm2", "attn2", "ff"):
            sub = getattr(blk, name, None)
            if sub is None:
                continue
            start = {}
            hooks.append(sub.register_forward_pre_hook(lambda m, a, start=start: start.update(t=time.perf_counter())))
            hooks.append(sub.register_forward_hook(lambda m, a, o, start=start, name=name: spent.__setitem__(
                name, spent.get(name, 0.0) + time.perf_counter() - start["t"])))
    try:
        with torch.no_grad():
            for _ in range(3):
                bm.module(**bm.kwargs)
            spent.clear()
            t0 = time.perf_counter()
            for _ in range(repeats):
                bm.module(**bm.kwargs)
            total = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    return {name: t / total for name, t in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.35,0.5")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--parts", default="block,mlp", help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument("--seed0", type=int, default=0, help="first seed (0: the evaluation seeds; 1000: calibration)")
    ap.add_argument("--time-shares", action="store_true", help="also print each submodule's share of a dense call")
    args = ap.parse_args()
    bm = resolve_model("small-dit")
    if args.time_shares:
        shares = time_shares(bm)
        print("share of a dense eager call: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    setup = QualitySetup(tuple(range(args.seed0, args.seed0 + args.seeds)), args.steps, bm.res, 3.0)
    dense = draw(bm.small_dit, setup, desc="dense").images
    print("| reduced | merged tokens get | ratio | median PSNR dB |\n|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        for part in args.parts.split(","):
            for mode in ("neighbour", "cache"):
                print(f"| {part} | {mode} | {ratio:g} | {probe(bm, setup, dense, part, mode, ratio):.2f} |", flush=True)


if __name__ == "__main__":
    main()
