"""What the call's arguments are, read by structure (names only break ties): the timestep the step
tracker counts, and the image lattice of packed tokens (position ids of any name, QwenImage-style
`img_shapes`, integer size arguments such as LTXVideo's num_frames / height / width).

Pure functions of the bound keyword arguments; no graph needed.
"""
from __future__ import annotations

import hashlib
import math

import torch
from torch._subclasses.fake_tensor import is_fake

TIMESTEP_NAMES = ("timestep", "timesteps", "t", "sigma", "sigmas", "time", "times", "ts", "noise_level",
                  "t_cond", "time_step")
ID_COLUMNS = (2, 3, 4)
_NOT_A_LATTICE_SOURCE = ("mask", "rope", "rotary", "freq", "cos", "sin", "hidden_states")  # features, never ids


# --- timestep ---------------------------------------------------------------------------------------
def _scalar_like(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    return isinstance(v, torch.Tensor) and v.dim() <= 1 and v.numel() >= 1


def find_timestep(kwargs: dict) -> tuple[str, object] | None:
    """(name, value) of the diffusion time input, or None.

    By name first (`timestep`, `timesteps`, `t`, `sigma`, ...), a scalar or a 0-/1-d tensor; else the
    only floating 0-/1-d tensor input. A time input that is already an embedding ([B, D]) is not a
    timestep: the model then runs schedules without step rules, and step rules need set_step().
    """
    for name in TIMESTEP_NAMES:
        if name in kwargs and _scalar_like(kwargs[name]):
            return name, kwargs[name]
    floats = [(k, v) for k, v in kwargs.items()
              if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() <= 1 and v.numel() >= 1]
    return floats[0] if len(floats) == 1 else None


def timestep_value(kwargs: dict):
    found = find_timestep(kwargs)
    return None if found is None else found[1]


# --- lattice hints ----------------------------------------------------------------------------------
def has_values(t: torch.Tensor) -> bool:
    """Whether the tensor's values can be read: not a meta or fake tensor (a capture on `meta`, a trace
    under FakeTensorMode). The value-based guesses below skip tensors without values."""
    return t.device.type != "meta" and not is_fake(t)


def lattice_from_ids(ids: torch.Tensor) -> tuple[int, ...] | None:
    """Position ids [N, c] / [B, N, c] (or [c, N] / [B, c, N]), c = 2-4 coordinate columns (Flux: frame,
    row, col; Flux2: t, h, w, layer). The columns that vary must enumerate a row-major lattice of 2 or 3
    axes; constant columns are ignored. Returns (h, w) or (f, h, w), else None."""
    if not isinstance(ids, torch.Tensor) or ids.dim() not in (2, 3) or ids.numel() == 0 or not has_values(ids):
        return None
    if ids.dim() == 3:
        ids = ids[0]
    if ids.shape[1] not in ID_COLUMNS and ids.shape[0] in ID_COLUMNS:
        ids = ids.t()
    if ids.shape[1] not in ID_COLUMNS or ids.shape[0] < 4:
        return None
    if ids.is_floating_point() and not torch.equal(ids, ids.round()):
        return None
    ids = ids.detach().cpu().round().long()
    cols = [ids[:, i] - ids[:, i].min() for i in range(ids.shape[1])]
    cols = [c for c in cols if int(c.max()) > 0]
    sizes = [int(c.max()) + 1 for c in cols]
    if len(sizes) not in (2, 3) or math.prod(sizes) != ids.shape[0]:
        return None
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return tuple(sizes) if torch.equal(torch.stack(cols, -1), grid) else None


def lattice_from_shapes(shapes) -> tuple[int, ...] | None:
    """QwenImage-style img_shapes: [(frames, h, w)] or [[(frames, h, w)]] per sample, all equal."""
    try:
        first = shapes[0]
        if isinstance(first, list):
            if len(first) != 1:
                return None
            first = first[0]
        f, h, w = (int(v) for v in first)
    except (TypeError, ValueError, IndexError):
        return None
    return (h, w) if f == 1 else (f, h, w)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_lattice(vals) -> tuple[int, ...] | None:
    vals = tuple(int(v) for v in vals)
    if len(vals) == 3 and vals[0] == 1:
        vals = vals[1:]
    return vals if len(vals) in (2, 3) and all(v >= 1 for v in vals) else None


def lattice_from_int_args(kwargs: dict, tokens: int) -> tuple[tuple[int, ...], str] | None:
    """The lattice from integer call arguments whose product is `tokens`: a tuple / list of 2-3 ints
    (`size=(h, w)`), or a run of 2-3 consecutive int arguments (`num_frames, height, width`)."""
    for name, v in kwargs.items():
        if isinstance(v, (tuple, list)) and 2 <= len(v) <= 3 and all(_int(x) for x in v) and math.prod(v) == tokens:
            lat = _as_lattice(v)
            if lat:
                return lat, f"lattice {lat} from integer argument {name}={tuple(v)}"
    names = list(kwargs)
    for run in (3, 2):
        for i in range(len(names) - run + 1):
            window = names[i:i + run]
            vals = [kwargs[n] for n in window]
            if all(_int(x) for x in vals) and math.prod(vals) == tokens:
                lat = _as_lattice(vals)
                if lat:
                    args = ", ".join(f"{n}={kwargs[n]}" for n in window)
                    return lat, f"lattice {lat} from integer arguments {args}"
    return None


def lattice_hints(kwargs: dict) -> list[tuple[tuple[int, ...], str]]:
    """Lattices the call states without a token count: position-id tensors of any name and
    `*shapes*` lists of (frames, h, w)."""
    out = []
    for name, v in kwargs.items():
        low = name.lower()
        if any(s in low for s in _NOT_A_LATTICE_SOURCE):
            continue
        if _id_like(name, v):
            lat = lattice_from_ids(v)
            if lat:
                out.append((lat, f"lattice {lat} from position ids {name}"))
        elif "shape" in low and isinstance(v, (list, tuple)) and v:
            lat = lattice_from_shapes(v)
            if lat:
                out.append((lat, f"lattice {lat} from {name}"))
    return out


def _id_like(name: str, v) -> bool:
    """Could this input be position ids: [N, c] / [B, N, c] (or transposed), c = 2-4, integer values. A
    tensor without values (meta, fake) states no lattice: the layout then comes from shapes or the schedule."""
    if not (isinstance(v, torch.Tensor) and v.dim() in (2, 3) and not v.is_complex() and has_values(v)
            and not any(s in name.lower() for s in _NOT_A_LATTICE_SOURCE)
            and (v.shape[-1] in ID_COLUMNS or v.shape[-2] in ID_COLUMNS)):
        return False
    return not v.is_floating_point() or bool(torch.equal(v, v.round()))


def _rows(ids: torch.Tensor) -> torch.Tensor:
    ids = ids[0] if ids.dim() == 3 else ids
    return ids.t() if ids.shape[1] not in ID_COLUMNS and ids.shape[0] in ID_COLUMNS else ids


def lattice_for_tokens(kwargs: dict, tokens: int) -> tuple[tuple[int, ...], str] | None:
    """The lattice of a packed sequence of `tokens` image tokens, from whatever the call states: ids of
    exactly those tokens, or the first / last `tokens` rows of ids for a combined sequence (Krea2's
    `position_ids` cover [text | image])."""
    for lat, note in lattice_hints(kwargs):
        if math.prod(lat) == tokens:
            return lat, note
    for name, v in kwargs.items():
        if _id_like(name, v) and _rows(v).shape[0] > tokens:
            rows = _rows(v)
            for part, where in ((rows[-tokens:], "last"), (rows[:tokens], "first")):
                lat = lattice_from_ids(part)
                if lat:
                    return lat, f"lattice {lat} from the {where} {tokens} rows of position ids {name}"
    return lattice_from_int_args(kwargs, tokens)


def lattice_signature(kwargs: dict) -> tuple:
    """What of the lattice a capture depends on beyond shapes and plain values: the content of every
    position-id-like tensor (its lattice, or a digest where it is not one lattice)."""
    out = []
    for name, v in kwargs.items():
        if _id_like(name, v) and v.numel() <= 1 << 20:
            lat = lattice_from_ids(v)
            data = v.detach().cpu().to(torch.float64).contiguous().numpy().tobytes()
            out.append((name, lat) if lat else (name, hashlib.sha1(data).hexdigest()))
    return tuple(out)
