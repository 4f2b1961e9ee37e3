"""Sample grid of the shipped small DiT and the evidence that it is a real model.

    python tools/sample_grid.py --out docs/small_dit_samples.png

Rows: the six classes; columns: seeds. Prints image statistics (total variation, power-spectrum
slope) of the samples next to the training data's and white noise's, and the held-out denoising loss
of the trained model next to the untrained network's.
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ditreduce.cli import _save_grid
from ditreduce.smalldit.data import CLASS_NAMES, batch
from ditreduce.smalldit.metrics import spectrum_slope, total_variation
from ditreduce.smalldit.models import load_small_dit, new_small_dit
from ditreduce.smalldit.sampling import sample


def _heldout(model, res):
    path = Path(__file__).with_name("train_small_dit.py")
    spec = importlib.util.spec_from_file_location("train_small_dit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.heldout_loss(model, res, n=64)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/small_dit_samples.png")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    model = load_small_dit()
    rows = []
    for c in range(len(CLASS_NAMES)):
        rows.append(sample(model, [c] * args.seeds, list(range(args.seeds)), steps=args.steps))
    _save_grid(rows, args.out)
    samples = torch.cat(rows)
    data, _ = batch(64, 64, torch.Generator().manual_seed(123))
    noise = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    print(f"wrote {args.out} ({len(CLASS_NAMES)} classes x {args.seeds} seeds, {args.steps} steps)")
    print(f"{'':10} {'TV':>8} {'spectrum slope':>15}")
    for name, imgs in (("samples", samples), ("data", data), ("noise", noise)):
        tv = np.mean([total_variation(x) for x in imgs])
        sl = np.mean([spectrum_slope(x) for x in imgs])
        print(f"{name:10} {tv:8.4f} {sl:15.2f}")
    torch.manual_seed(0)
    untrained = new_small_dit()
    for res in (32, 64):
        print(f"held-out loss @{res}px: trained {_heldout(model, res):.4f}, untrained {_heldout(untrained, res):.4f}")


if __name__ == "__main__":
    main()
