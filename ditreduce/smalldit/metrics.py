"""Quality metrics between a reduced and a dense sample (scikit-image's PSNR / SSIM) and image statistics."""
from __future__ import annotations

import numpy as np
import torch


def to_unit(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) float64 in [0, 1]."""
    return ((img.detach().cpu().double().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    x, y = to_unit(a), to_unit(b)
    if np.array_equal(x, y):
        return float("inf")
    return float(peak_signal_noise_ratio(x, y, data_range=1.0))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(to_unit(a), to_unit(b), channel_axis=2, data_range=1.0))


def total_variation(img: torch.Tensor) -> float:
    """Mean absolute difference of neighbouring pixels, on [0, 1] images."""
    x = torch.from_numpy(to_unit(img))
    return float(((x[1:] - x[:-1]).abs().mean() + (x[:, 1:] - x[:, :-1]).abs().mean()) / 2)


def spectrum_slope(img: torch.Tensor) -> float:
    """Slope of log radial power vs log frequency (natural images ~ -2, white noise ~ 0)."""
    x = torch.from_numpy(to_unit(img)).mean(-1)
    x = x - x.mean()
    p = torch.fft.fftshift(torch.fft.fft2(x)).abs() ** 2
    h, w = p.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    r = torch.sqrt(yy.double() ** 2 + xx.double() ** 2).round().long()
    rmax = min(h, w) // 2
    radial = torch.stack([p[r == i].mean() for i in range(1, rmax)])
    f = torch.arange(1, rmax, dtype=torch.float64)
    slope = np.polyfit(np.log(f.numpy()), np.log(radial.numpy() + 1e-12), 1)[0]
    return float(slope)
