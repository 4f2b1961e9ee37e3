"""DiTo interval / lam sweep on the small DiT: PSNR / SSIM vs dense, 4 seeds, 20 steps, first 20 % dense.

    python tools/dito_sweep.py "[0.5]" "[(1, 0.0), (2, 0.3)]"     # ratios, [(interval, lam), ...]
"""
import sys

import torch

from ditreduce import compile_with_reduction
from ditreduce.smalldit.metrics import psnr, ssim
from ditreduce.smalldit.models import load_small_dit
from ditreduce.smalldit.sampling import sample

torch.set_num_threads(1)
m = load_small_dit()
labels, seeds = [0, 1, 2, 3], [0, 1, 2, 3]
dense = sample(m, labels, seeds, steps=20)


def sched(method, ratio, params=None):
    s = {"version": 1, "method": method, "ratio": ratio, "scope": "attention", "num_steps": 20,
         "rules": [{"step_fraction": {"start": 0.0, "stop": 0.2}, "method": "none"}]}
    if params:
        s["params"] = {method: params}
    return s


configs = [("tome", None), ("uniform", None)] + [("dito", {"interval": i, "lam": lam}) for i, lam in eval(sys.argv[2])]
for ratio in eval(sys.argv[1]):
    for method, params in configs:
        r = compile_with_reduction(m.transformer, sched(method, ratio, params))
        with r.generation(num_steps=20):
            img = sample(m, labels, seeds, steps=20, transformer=r)
        p = sum(psnr(a, b) for a, b in zip(img, dense)) / len(img)
        s = sum(ssim(a, b) for a, b in zip(img, dense)) / len(img)
        print(f"{ratio} {method} {params or ''} PSNR {p:.2f} SSIM {s:.4f}", flush=True)
