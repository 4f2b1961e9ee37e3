"""Dense vs several reduced variants of one model, timed side by side in ONE process: every repeat
calls dense and each variant once (order rotating), the speedup of a variant is computed per repeat
from that repeat's times, and the table gives its median [min–max], the FLOPs-ideal speedup (whole-model
FLOPs, dense ÷ reduced, counted on the graphs) and achieved ÷ ideal.

    python tools/speed_table.py --tokens 4096 --blocks 2 --repeats 5 \
        --configs coredit@attention+proj@0.5 uniform@attention@0.5 coredit@block@0.5

A config is METHOD@SCOPE@RATIO (one variant: every step at that ratio). The model is the bench's
PixArt-α-shaped transformer (hidden 1152, 16 heads × 72, 120 caption tokens of 4096 channels, batch 2,
random weights, fp32).
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from tqdm import tqdm

from ditreduce import compile_with_reduction
from ditreduce.bench.models import resolve_model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--configs", nargs="+", default=["uniform@attention@0.5", "coredit@attention+proj@0.5"])
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    bm = resolve_model(f"pixart-alpha:{args.tokens}:{args.blocks}")
    model, kw = bm.module, bm.kwargs
    runs = {"dense": model}
    ideal, scopes = {}, {}
    for cfg in args.configs:
        method, scope, ratio = cfg.split("@")
        red = compile_with_reduction(model, {"method": method, "scope": scope, "ratio": float(ratio)}, **kw)
        rep = red.report()
        ideal[cfg] = rep.model_flops[0] / rep.model_flops[1]
        scopes[cfg] = ",".join(sorted({r.scope for r in rep if r.reduced}))
        runs[cfg] = red
    names = list(runs)
    times = {n: [] for n in names}
    with torch.no_grad():
        for n in names:  # warm-up: first call of every variant (rewrite, allocator)
            runs[n](**kw)
        for rep_i in tqdm(range(args.repeats), desc="repeats"):
            order = names[rep_i % len(names):] + names[:rep_i % len(names)]
            for n in order:
                t0 = time.perf_counter()
                runs[n](**kw)
                times[n].append(time.perf_counter() - t0)
    print(f"PixArt-α shape, {args.tokens} image tokens, {args.blocks} block(s), batch 2, fp32, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    print("| config | scope applied | dense s/call | reduced s/call | speedup median [min–max] | FLOPs-ideal | achieved/ideal |")
    print("|---|---|---|---|---|---|---|")
    dense = times["dense"]
    for n in names[1:]:
        sp = [d / r for d, r in zip(dense, times[n])]
        med = statistics.median(sp)
        print(f"| {n} | {scopes[n]} | {statistics.median(dense):.2f} | {statistics.median(times[n]):.2f} | "
              f"{med:.2f}× [{min(sp):.2f}–{max(sp):.2f}] | {ideal[n]:.2f}× | {med / ideal[n]:.2f} |")


if __name__ == "__main__":
    main()
