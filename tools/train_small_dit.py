"""Train the small PixArt-shaped DiT that ships in ditreduce/smalldit/models/small_dit.

Rectified-flow objective (x_t = (1-s) x0 + s e, target e - x0, timestep = 1000 s), matching
ditreduce.smalldit.sampling's FlowMatchEulerDiscreteScheduler. Fixed seed, resumable (checkpoint every
--save-every steps), tqdm progress bar, loss log as CSV. Most steps train on 32x32 renders
(256 tokens, cheap); the last --hires-frac of steps on 64x64 (1024 tokens), the sampling resolution.

    python tools/train_small_dit.py --steps 6000 --out ditreduce/smalldit/models/small_dit
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ditreduce.smalldit.data import NULL_CLASS, batch
from ditreduce.smalldit.models import new_small_dit, save_small_dit


def flow_loss(model, x0, labels, g, null_prob=0.1, sigma=None):
    b = x0.shape[0]
    if sigma is None:
        sigma = torch.sigmoid(torch.randn(b, generator=g))  # logit-normal, as SD3
    drop = torch.rand(b, generator=g) < null_prob
    labels = torch.where(drop, torch.full_like(labels, NULL_CLASS), labels)
    noise = torch.randn(x0.shape, generator=g)
    s = sigma.view(-1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    ctx = model.captions(labels)
    pred = model.transformer(xt, encoder_hidden_states=ctx, timestep=sigma * 1000, return_dict=False)[0]
    return ((pred - (noise - x0)) ** 2).mean()


@torch.no_grad()
def heldout_loss(model, res: int, n: int = 64, seed: int = 987654) -> float:
    """Loss on held-out renders (a generator stream never used in training) at fixed sigmas."""
    g = torch.Generator().manual_seed(seed)
    x0, labels = batch(n, res, g)
    sig = torch.linspace(0.05, 0.95, n)
    return float(flow_loss(model, x0, labels, g, null_prob=0.0, sigma=sig))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=32, help="batch at 32x32; halved at 64x64")
    ap.add_argument("--hires-frac", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="runs/small_dit", help="checkpoint and loss log")
    ap.add_argument("--out", default="ditreduce/smalldit/models/small_dit", help="where the final model is saved")
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--config", default=None, help="JSON overrides of SMALL_DIT_CONFIG (tests use a tiny one)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    model = new_small_dit(json.loads(args.config) if args.config else None)
    params = list(model.transformer.parameters()) + list(model.captions.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    ema = copy.deepcopy(model)
    g = torch.Generator().manual_seed(args.seed)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = work / "ckpt.pt", work / "loss.csv"
    start, elapsed = 0, 0.0
    untrained = {r: heldout_loss(model, r, n=32) for r in (32, 64)}
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.transformer.load_state_dict(ck["model"]); model.captions.load_state_dict(ck["captions"])
        ema.transformer.load_state_dict(ck["ema"]); ema.captions.load_state_dict(ck["ema_captions"])
        opt.load_state_dict(ck["opt"]); g.set_state(ck["gen"]); torch.set_rng_state(ck["torch_rng"])
        start, elapsed, untrained = ck["step"], ck["elapsed"], ck["untrained"]
        print(f"resumed at step {start}")
    hires_from = int(args.steps * (1 - args.hires_frac))
    rows = []
    if start and log_path.exists():  # keep the log of the steps the checkpoint holds, drop the rest
        with open(log_path, newline="") as f:
            rows = [r for r in csv.reader(f)][1:]
        rows = [r for r in rows if int(r[0]) < start]
    logf = open(log_path, "w", newline="")
    log = csv.writer(logf)
    log.writerow(["step", "res", "loss", "lr", "seconds"])
    log.writerows(rows)

    def save(step):
        torch.save(dict(model=model.transformer.state_dict(), captions=model.captions.state_dict(),
                        ema=ema.transformer.state_dict(), ema_captions=ema.captions.state_dict(),
                        opt=opt.state_dict(), gen=g.get_state(), torch_rng=torch.get_rng_state(),
                        step=step, elapsed=elapsed, untrained=untrained), ckpt_path)

    model.transformer.train()
    t0 = time.time() - elapsed
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train")
    for step in bar:
        res = 64 if step >= hires_from else 32
        bsz = args.batch // 2 if res == 64 else args.batch
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + math.cos(math.pi * step / args.steps)) * 0.9 + 0.1)
        for pg in opt.param_groups:
            pg["lr"] = lr
        x0, labels = batch(bsz, res, g)
        loss = flow_loss(model, x0, labels, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(list(ema.transformer.parameters()) + list(ema.captions.parameters()), params):
                pe.lerp_(pm, 1 - decay)
        elapsed = time.time() - t0
        log.writerow([step, res, f"{loss.item():.5f}", f"{lr:.2e}", f"{elapsed:.1f}"])
        bar.set_postfix(loss=f"{loss.item():.4f}", res=res)
        if (step + 1) % args.save_every == 0:
            logf.flush()
            save(step + 1)
    logf.close()
    save(args.steps)
    ema.transformer.eval()
    meta = dict(steps=args.steps, seed=args.seed, train_seconds=round(elapsed, 1),
                heldout_loss={str(r): heldout_loss(ema, r, n=32) for r in (32, 64)},
                untrained_heldout_loss={str(r): v for r, v in untrained.items()},
                args=vars(args))
    save_small_dit(ema, args.out, meta)
    print(json.dumps(meta, indent=1))
    return meta


if __name__ == "__main__":
    main()
