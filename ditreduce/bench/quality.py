"""Quality of a reduced model against dense on the same seeds: PSNR and SSIM (ditreduce.smalldit.metrics,
scikit-image) of samples from the shipped trained DiT (ditreduce.smalldit.sampling.sample). The sampler
(noise, scheduler, captions) stays on the CPU in fp32; each transformer call runs on the bench's device
in its dtype, and its output comes back as CPU fp32."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..smalldit.metrics import psnr, ssim
from ..smalldit.sampling import sample
from .progress import progress_bar


@dataclass
class Samples:
    images: torch.Tensor   # (seeds, 3, res, res) in [-1, 1]
    seconds: float


@dataclass(frozen=True)
class QualitySetup:
    seeds: tuple[int, ...]
    steps: int = 20
    res: int = 64
    guidance: float = 3.0
    device: str = "cpu"
    dtype: str = "fp32"

    def labels(self, num_classes: int) -> list[int]:
        return [i % num_classes for i in range(len(self.seeds))]


def draw(small_dit, setup: QualitySetup, transformer=None, desc: str = "sampling") -> Samples:
    """Samples of the small DiT (dense if transformer is None; a ReducedModel runs in one generation)."""
    bar = progress_bar(total=setup.steps, desc=desc, leave=False)
    t0 = time.perf_counter()
    kw = dict(res=setup.res, steps=setup.steps, guidance=setup.guidance, progress=lambda i: bar.update(1))
    labels = setup.labels(len(small_dit.class_names))
    if transformer is None:
        imgs = sample(small_dit, labels, setup.seeds, transformer=on_device(small_dit.transformer, setup), **kw)
    else:
        with transformer.generation(num_steps=setup.steps):
            imgs = sample(small_dit, labels, setup.seeds, transformer=on_device(transformer, setup), **kw)
    bar.close()
    return Samples(imgs, time.perf_counter() - t0)


def on_device(net, setup: QualitySetup):
    """net as the sampler calls it, run on the setup's device and dtype (the CPU fp32 call unchanged)."""
    if setup.device == "cpu" and setup.dtype == "fp32":
        return net
    from .device import to_device

    def call(hidden_states, **kw):
        kw = to_device(dict(kw, hidden_states=hidden_states), setup.device, setup.dtype)
        out = net(**kw)
        return (out[0].float().cpu(),)
    return call


def compare(reduced: torch.Tensor, dense: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-seed PSNR (dB) and SSIM of reduced samples against the dense ones."""
    if reduced.shape != dense.shape:
        raise ValueError(f"sample shapes differ: {tuple(reduced.shape)} vs {tuple(dense.shape)}")
    return [psnr(a, b) for a, b in zip(reduced, dense)], [ssim(a, b) for a, b in zip(reduced, dense)]
