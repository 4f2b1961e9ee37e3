"""Training data for the small DiT: procedural scenes rendered at any resolution, plus photo crops.

Nothing is downloaded. Classes 0-4 are drawn analytically (so the same scene renders at 32 or 64
pixels with the same field of view); class 5 crops scikit-image's bundled sample photographs.
Images are float tensors in [-1, 1], shape (B, 3, R, R).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASS_NAMES = ("circles", "stripes", "rectangles", "landscape", "checker", "photo")
NUM_CLASSES = len(CLASS_NAMES)
NULL_CLASS = NUM_CLASSES  # the caption row used for the unconditional half of CFG

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def _grid(b: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(res, dtype=torch.float32) + 0.5) / res
    y, x = torch.meshgrid(c, c, indexing="ij")
    return y.expand(b, res, res), x.expand(b, res, res)


def _soft(d: torch.Tensor, res: int) -> torch.Tensor:
    """Anti-aliased inside-indicator of a signed distance (negative inside), one pixel wide."""
    return torch.sigmoid(-d * res * 2.0)


def _colors(g: torch.Generator, b: int, n: int = 1) -> torch.Tensor:
    return torch.rand(b, n, 3, generator=g)


def _paint(img: torch.Tensor, mask: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(1)
    return img * (1 - m) + color.view(-1, 3, 1, 1) * m


def _background(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    y, x = _grid(b, res)
    c0, c1 = _colors(g, b, 2).unbind(1)
    ang = torch.rand(b, generator=g) * 2 * math.pi
    t = (x - 0.5) * torch.cos(ang).view(-1, 1, 1) + (y - 0.5) * torch.sin(ang).view(-1, 1, 1) + 0.5
    t = t.clamp(0, 1).unsqueeze(1)
    return c0.view(-1, 3, 1, 1) * (1 - t) + c1.view(-1, 3, 1, 1) * t


def circles(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    img = _background(g, b, res)
    y, x = _grid(b, res)
    for _ in range(3):
        cy, cx = (torch.rand(2, b, 1, 1, generator=g) * 0.8 + 0.1)
        r = torch.rand(b, 1, 1, generator=g) * 0.2 + 0.08
        d = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2) - r
        img = _paint(img, _soft(d, res), _colors(g, b)[:, 0])
    return img


def stripes(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    y, x = _grid(b, res)
    ang = torch.rand(b, 1, 1, generator=g) * math.pi
    freq = torch.rand(b, 1, 1, generator=g) * 4 + 2
    phase = torch.rand(b, 1, 1, generator=g) * 2 * math.pi
    s = torch.sin(2 * math.pi * freq * (x * torch.cos(ang) + y * torch.sin(ang)) + phase)
    t = (0.5 + 0.5 * s).unsqueeze(1)
    c0, c1 = _colors(g, b, 2).unbind(1)
    return c0.view(-1, 3, 1, 1) * (1 - t) + c1.view(-1, 3, 1, 1) * t


def rectangles(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    img = _colors(g, b)[:, 0].view(-1, 3, 1, 1).expand(b, 3, res, res).clone()
    y, x = _grid(b, res)
    for _ in range(3):
        cy, cx = torch.rand(2, b, 1, 1, generator=g) * 0.8 + 0.1
        hy, hx = torch.rand(2, b, 1, 1, generator=g) * 0.2 + 0.06
        d = torch.maximum((y - cy).abs() - hy, (x - cx).abs() - hx)
        img = _paint(img, _soft(d, res), _colors(g, b)[:, 0])
    return img


def landscape(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    y, x = _grid(b, res)
    sky_top = torch.tensor([0.15, 0.35, 0.85]) + 0.15 * torch.rand(b, 3, generator=g)
    sky_bot = torch.tensor([0.75, 0.85, 0.95]) - 0.15 * torch.rand(b, 3, generator=g)
    t = y.unsqueeze(1)
    img = sky_top.view(-1, 3, 1, 1) * (1 - t) + sky_bot.view(-1, 3, 1, 1) * t
    sy, sx = torch.rand(2, b, 1, 1, generator=g) * torch.tensor([0.3, 0.8]).view(2, 1, 1, 1) + 0.1
    sun = torch.sqrt((y - sy) ** 2 + (x - sx) ** 2) - 0.08
    img = _paint(img, _soft(sun, res), torch.tensor([1.0, 0.85, 0.3]).expand(b, 3))
    h = torch.rand(b, 1, 1, generator=g) * 0.3 + 0.5
    amp = torch.rand(b, 1, 1, generator=g) * 0.08
    fr = torch.rand(b, 1, 1, generator=g) * 3 + 1
    ph = torch.rand(b, 1, 1, generator=g) * 2 * math.pi
    horizon = h + amp * torch.sin(2 * math.pi * fr * x + ph)
    ground = torch.tensor([0.2, 0.55, 0.2]) + 0.25 * (torch.rand(b, 3, generator=g) - 0.5)
    return _paint(img, _soft(horizon - y, res), ground)


def checker(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    y, x = _grid(b, res)
    n = torch.randint(2, 7, (b, 1, 1), generator=g).float()
    s = torch.sin(math.pi * n * x) * torch.sin(math.pi * n * y)
    t = torch.sigmoid(s * res / n * 2).unsqueeze(1)
    c0, c1 = _colors(g, b, 2).unbind(1)
    return c0.view(-1, 3, 1, 1) * (1 - t) + c1.view(-1, 3, 1, 1) * t


_photo_cache: list[torch.Tensor] = []


def _photos() -> list[torch.Tensor]:
    if not _photo_cache:
        import skimage.data

        for name in _PHOTOS:
            arr = getattr(skimage.data, name)()
            _photo_cache.append(torch.from_numpy(arr[..., :3].copy()).permute(2, 0, 1).float() / 255)
    return _photo_cache


def photo(g: torch.Generator, b: int, res: int) -> torch.Tensor:
    """Random square crops (a quarter to a half of the short side), resized, flipped, jittered."""
    out = []
    for _ in range(b):
        pics = _photos()
        im = pics[int(torch.randint(len(pics), (1,), generator=g))]
        h, w = im.shape[1:]
        side = int(min(h, w) * (0.25 + 0.25 * float(torch.rand(1, generator=g))))
        top = int(torch.randint(h - side + 1, (1,), generator=g))
        left = int(torch.randint(w - side + 1, (1,), generator=g))
        crop = im[:, top:top + side, left:left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(res, res), mode="bilinear", antialias=True, align_corners=False)[0]
        if float(torch.rand(1, generator=g)) < 0.5:
            crop = crop.flip(-1)
        jitter = 1 + 0.2 * (torch.rand(3, 1, 1, generator=g) - 0.5)
        out.append((crop * jitter).clamp(0, 1))
    return torch.stack(out)


_RENDER = (circles, stripes, rectangles, landscape, checker, photo)


def render(labels: torch.Tensor, res: int, g: torch.Generator) -> torch.Tensor:
    """Images for class `labels` (B,) at `res`×`res`, in [-1, 1]."""
    img = torch.empty(len(labels), 3, res, res)
    for c, fn in enumerate(_RENDER):
        idx = (labels == c).nonzero().flatten()
        if len(idx):
            img[idx] = fn(g, len(idx), res)
    return img.clamp(0, 1) * 2 - 1


def batch(b: int, res: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(NUM_CLASSES, (b,), generator=g)
    return render(labels, res, g), labels
