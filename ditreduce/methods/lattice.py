"""Lattice helpers the methods share: neighbour similarities by shifted tensors (linear in N, never
N×N), static neighbour / window tables, TopK that respects the lowering limit, and the inverse map of a
kept set. Everything traces to Pad / Slice / Gather / TopK / ScatterElements (no reduction)."""
from __future__ import annotations

import contextlib
import math
from functools import lru_cache, wraps

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

from ..regions import outside_inference_mode

MAX_TOPK = 3840  # TensorRT's TopK limit: K must be a constant <= 3840
# the 8 in-frame neighbours, in a fixed order (slot m+1 of a reconstruct selection is direction m)
DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


_CACHES: list = []      # every static_table's lru_cache
_ON_DEVICE: dict = {}   # (id(table), device) -> (table, its copy on device)


def static_table(fn):
    """Cache a function of (lattice, ints) that builds constant tables, and build them as real tensors
    even when first called while a graph is traced (fake tensors, export): they are graph constants. They
    are ordinary tensors even when first built under torch.inference_mode(): an inference tensor in the
    cache would make every later call with autograd on fail (index_select saves its index for backward)."""
    cached = lru_cache(maxsize=64)(fn)
    _CACHES.append(cached)

    @wraps(fn)
    def wrapper(*args):
        with _constant_context():
            return cached(*args)
    return wrapper


def clear_tables() -> None:
    """Drop every cached constant table and its device copies (they are rebuilt on the next call)."""
    for cached in _CACHES:
        cached.cache_clear()
    _ON_DEVICE.clear()


def _constant_context():
    """Where constant tables are built: real tensors (no fake mode, no tracing), no autograd, no inference mode."""
    stack = contextlib.ExitStack()
    stack.enter_context(unset_fake_temporarily())
    stack.enter_context(disable_proxy_modes_tracing())
    stack.enter_context(outside_inference_mode())
    stack.enter_context(torch.no_grad())
    return stack


def on_device(table, device):
    """A static_table's result (a tensor, or a tuple / dict of them) on `device`, copied there once per
    device: the graph calls a method's selection on every call, and a fresh host copy each time is a
    synchronising host-to-device transfer on CUDA (the stream drains before every region). A device this
    process cannot allocate on (a fake `cuda` while a graph is traced without a GPU) gets a traced copy."""
    device = torch.device(device)
    if device.type == "cpu":
        return table
    if not _allocatable(device):
        return _to(table, device)
    key = (id(table), device)
    hit = _ON_DEVICE.get(key)
    if hit is None or hit[0] is not table:
        if len(_ON_DEVICE) > 256:
            _ON_DEVICE.clear()
        with _constant_context():
            hit = _ON_DEVICE[key] = (table, _to(table, device))
    return hit[1]


def _allocatable(device: torch.device) -> bool:
    if device.type == "meta":
        return True
    backend = getattr(torch, device.type, None)
    return bool(backend is not None and getattr(backend, "is_available", lambda: False)())


def _to(table, device):
    if isinstance(table, torch.Tensor):
        return table.to(device)
    if isinstance(table, dict):
        return {key: _to(v, device) for key, v in table.items()}
    if isinstance(table, tuple):
        return tuple(_to(v, device) for v in table)
    return table


def frames(lattice: tuple[int, ...]) -> tuple[int, int, int]:
    """(F, H, W) of an image (H, W) or video (F, H, W) lattice; neighbours are taken within a frame."""
    return (1, *lattice) if len(lattice) == 2 else tuple(lattice)


def pair_dots(x: torch.Tensor, offset: int) -> torch.Tensor:
    """[B, N]: <x_i, x_{i+offset}> along the flattened token order, offset > 0 (0 past the end).

    A shift in the flattened (batch-major, row-major) order is a contiguous slice and the dot one
    matrix product: one read of each operand, no [B, N, C] temporary. Pairs that cross a row or frame
    border are garbage that the caller masks with neighbour_table's validity; pairs that cross into the next
    sample are zeroed here by a select (a NaN in one sample must never reach another, and NaN * 0 is NaN)."""
    b, n, c = x.shape
    flat = x.reshape(b * n, c)
    d = F.pad(torch.einsum("nc,nc->n", flat[:b * n - offset], flat[offset:]), (0, offset)).reshape(b, n)
    inside = torch.arange(n, device=x.device) < n - offset
    return torch.where(inside, d, torch.zeros((), dtype=d.dtype, device=d.device))


def neighbour_cosines(x: torch.Tensor, lattice) -> torch.Tensor:
    """[B, N, 8]: cosine similarity of every token to its 8 in-frame neighbours (0 outside the frame).

    Four dot products (right, down-left, down, down-right) give all eight: the opposite direction of
    token i is the same pair seen from i + offset. Rows wrapping across a frame border are masked by
    the caller with neighbour_table's validity."""
    w = frames(lattice)[2]
    xf = x.float()
    inv_norm = torch.einsum("nc,nc->n", xf.reshape(-1, xf.shape[-1]), xf.reshape(-1, xf.shape[-1]))
    inv_norm = inv_norm.clamp(min=1e-12).rsqrt().reshape(x.shape[0], -1)
    out = {}
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        off = dy * w + dx
        fwd = pair_dots(xf, off) * inv_norm * F.pad(inv_norm[:, off:], (0, off))
        out[(dy, dx)] = fwd
        out[(-dy, -dx)] = F.pad(fwd[:, :-off], (off, 0))
    return torch.stack([out[d] for d in DIRECTIONS], -1)


@static_table
def neighbour_table(lattice: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Static ([N, 8] neighbour token index (itself where outside), [N, 8] bool inside the frame)."""
    f, h, w = frames(lattice)
    fi, yi, xi = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    idx, valid = [], []
    for dy, dx in DIRECTIONS:
        ny, nx = yi + dy, xi + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        j = (fi * h + ny.clamp(0, h - 1)) * w + nx.clamp(0, w - 1)
        self_i = (fi * h + yi) * w + xi
        idx.append(torch.where(ok, j, self_i).reshape(-1))
        valid.append(ok.reshape(-1))
    return torch.stack(idx, -1), torch.stack(valid, -1)


def window_argmin(score: torch.Tensor, lattice, size: int = 2) -> torch.Tensor:
    """[B, N] 1.0 at the lowest-scoring token of each size×size window (partial windows at the border
    included; ties go to the first token of the window in row-major order), else 0.0."""
    f, h, w = frames(lattice)
    b = score.shape[0]
    hw, ww = math.ceil(h / size), math.ceil(w / size)
    s = F.pad(score.reshape(b, f, h, w), (0, ww * size - w, 0, hw * size - h), value=float("inf"))
    s = s.reshape(b, f, hw, size, ww, size).permute(0, 1, 2, 4, 3, 5).reshape(b, f, hw, ww, size * size)
    hit = (s.argmin(-1, keepdim=True) == torch.arange(size * size, device=score.device)).to(score.dtype)
    hit = hit.reshape(b, f, hw, ww, size, size).permute(0, 1, 2, 4, 3, 5).reshape(b, f, hw * size, ww * size)
    return hit[:, :, :h, :w].reshape(b, -1)


def topk_groups(n: int, k: int) -> int:
    """Number of equal groups a TopK of k out of n must be split into (1 when k <= MAX_TOPK)."""
    if k <= MAX_TOPK:
        return 1
    g = math.ceil(k / MAX_TOPK)
    while n % g or math.ceil(k / g) > MAX_TOPK:
        g += 1
    return g


def grouped_k(n: int, k: int, minimum: int = 1) -> int:
    """The k a grouped TopK really selects: a multiple of the group count, at least `minimum`."""
    g = topk_groups(n, k)
    if g == 1:
        return k
    out = max(g, g * round(k / g))
    while out < minimum:
        out += g
    return min(n, out)


def topk_indices(score: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] indices of the largest scores; above MAX_TOPK, per contiguous group (rows of the lattice),
    k / G in each, so that every TopK has a constant K <= MAX_TOPK. k must come from grouped_k."""
    b, n = score.shape
    g = topk_groups(n, k)
    if g == 1:
        return torch.topk(score, k, dim=1).indices
    per = n // g
    idx = torch.topk(score.reshape(b, g, per), k // g, dim=2).indices
    return (idx + torch.arange(g, device=score.device)[:, None] * per).reshape(b, k)


def inverse_positions(kept: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, N] position of each token in `kept` (0 where not kept), [B, N] 1.0 where kept), by a plain
    scatter (no reduction: every index is written once)."""
    b, k = kept.shape
    pos = torch.arange(k, device=kept.device).expand(b, k)
    inv = torch.zeros(b, n, dtype=torch.long, device=kept.device).scatter(1, kept, pos)
    mask = torch.zeros(b, n, device=kept.device).scatter(1, kept, torch.ones(b, k, device=kept.device))
    return inv, mask


def cfg_pairs(latent: torch.Tensor) -> torch.Tensor:
    """[B/2] bool: sample i and sample i + B/2 have the same latent (diffusers' CFG batch [uncond | cond]
    concatenates the same latents twice). Static shapes, no boolean indexing: Equal, Cast, ReduceMin. A NaN
    latent equals nothing, so a poisoned sample is never paired. Odd batches: an empty tensor."""
    b = latent.shape[0]
    h = b // 2
    if b % 2 or h == 0:
        return torch.zeros(0, dtype=torch.bool, device=latent.device)
    eq = (latent[:h] == latent[h:2 * h]).reshape(h, -1).to(torch.float32)
    return eq.amin(1) > 0


def share_cfg_halves(t: torch.Tensor, pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Give both samples of a CFG pair (i, i + B/2) the mean of their per-sample tensor `t`, so that they
    select identically; every other sample keeps its own. pairs: [B/2] bool from cfg_pairs (the latent's
    halves); None pairs every i with i + B/2 (a direct call on a known CFG batch). Odd batches, and pairs
    that do not fit the batch, are returned unchanged."""
    b = t.shape[0]
    h = b // 2
    if b % 2 or (pairs is not None and pairs.shape[0] != h):
        return t
    m = (t[:h] + t[h:]) * 0.5
    if pairs is None:
        return torch.cat([m, m], 0)
    same = pairs.reshape(h, *([1] * (t.dim() - 1)))
    return torch.cat([torch.where(same, m, t[:h]), torch.where(same, m, t[h:])], 0)


def nearest_kept(lattice: tuple[int, ...], kept: torch.Tensor) -> torch.Tensor:
    """Static: [N] position in `kept` of every token's nearest kept token (Euclidean on the lattice)."""
    axes = [torch.arange(s, dtype=torch.float32) for s in lattice]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(lattice))
    kc = coords[kept]
    n = coords.shape[0]
    src = torch.empty(n, dtype=torch.long)
    for lo in range(0, n, 2048):  # chunked: computed once per (lattice, k)
        src[lo:lo + 2048] = torch.cdist(coords[lo:lo + 2048], kc).argmin(1)
    src[kept] = torch.arange(kept.shape[0])
    return src
