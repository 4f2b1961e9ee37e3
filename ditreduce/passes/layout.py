"""Pass 3 — layout inference: which positions of each attention sequence are image tokens (and their
lattice H×W or F×H×W) and which are text, by dataflow from the inputs (see axes.py, propagate.py).

Seeds: the latent input `hidden_states` [B, C, H, W] / [B, C, F, H, W] / [B, F, C, H, W] (the channel
dim is the one of the model's `in_channels`); packed tokens [B, N, C] take their lattice from the
call's `img_ids` ([N, 3] rows (frame, row, col)) or `img_shapes` ([(F, H, W)] per sample); any input
named `*encoder_hidden_states*` of rank 3 is a text segment. Where the labels are lost, the site is
skipped and the op that stopped the analysis is named.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx

from . import axes
from .axes import opaque, opaque_label, plain
from .propagate import propagate
from .site import Layout, Segment, Site


class LayoutError(ValueError):
    """A layout override or lattice hint that does not fit the model's shapes."""


@dataclass
class Seeds:
    labels: dict            # placeholder name -> Label
    notes: list[str]        # what was seeded and from where
    missing: str | None = None  # why the latent carries no lattice, if it does not


def lattice_from_ids(ids: torch.Tensor) -> tuple[int, ...] | None:
    """Flux-style position ids [N, 3] (or [B, N, 3]): (frame, row, col) in row-major order."""
    if ids.dim() == 3:
        ids = ids[0]
    if ids.dim() != 2 or ids.shape[1] != 3:
        return None
    ids = ids.round().long()
    rows = ids[:, 1] - ids[:, 1].min()
    cols = ids[:, 2] - ids[:, 2].min()
    h, w = int(rows.max()) + 1, int(cols.max()) + 1
    if h * w != ids.shape[0]:
        return None
    expect = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    if not (torch.equal(rows.cpu(), expect[0]) and torch.equal(cols.cpu(), expect[1])):
        return None
    return (h, w)


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


def _lattice_dim(lattice: tuple[int, ...]) -> axes.DimLabel:
    names = ("y", "x") if len(lattice) == 2 else ("f", "y", "x")
    return plain(*zip(names, lattice))


def seed_inputs(gm: fx.GraphModule, kwargs: dict, in_channels: int | None) -> Seeds:
    labels, notes, missing = {}, [], "no input named hidden_states: the latent could not be identified"
    hint = None
    if isinstance(kwargs.get("img_ids"), torch.Tensor):
        hint = lattice_from_ids(kwargs["img_ids"])
        notes.append(f"lattice {hint} from img_ids" if hint else "img_ids present but not a row-major lattice")
    elif kwargs.get("img_shapes") is not None:
        hint = lattice_from_shapes(kwargs["img_shapes"])
        notes.append(f"lattice {hint} from img_shapes" if hint else "img_shapes present but not one lattice")
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        s = tuple(val.shape)
        name = node.name
        if name == "hidden_states" and val.is_floating_point():
            lab = _seed_latent(s, in_channels, hint)
            if lab is not None:
                labels[node], missing = lab, None
                notes.append(f"hidden_states {list(s)} seeded as {_describe(lab)}")
            else:
                missing = (f"the latent input hidden_states {list(s)} carries no lattice"
                           + (f" ({notes[0]})" if notes else " (packed tokens and no img_ids / img_shapes)"))
        elif "encoder_hidden_states" in name and val.dim() == 3 and val.is_floating_point():
            labels[node] = (plain(("b", s[0])), plain((f"t:{name}", s[1])), opaque(s[2]))
            notes.append(f"{name} {list(s)} seeded as text")
    if missing is not None:
        notes.append(missing)
    return Seeds(labels, notes, missing)


def _seed_latent(s, in_channels, hint):
    b = plain(("b", s[0]))
    if len(s) == 4:
        return (b, opaque(s[1]), plain(("y", s[2])), plain(("x", s[3])))
    if len(s) == 5:
        # [B, C, F, H, W] (Wan) or [B, F, C, H, W] (CogVideoX): the channel dim is the in_channels one
        if in_channels is not None and s[2] == in_channels and s[1] != in_channels:
            return (b, plain(("f", s[1])), opaque(s[2]), plain(("y", s[3])), plain(("x", s[4])))
        return (b, opaque(s[1]), plain(("f", s[2])), plain(("y", s[3])), plain(("x", s[4])))
    if len(s) == 3 and hint is not None and math.prod(hint) == s[1]:
        return (b, _lattice_dim(hint), opaque(s[2]))
    return None


def _describe(lab) -> str:
    return "[" + ", ".join("·".join(f"{a[0] or '_'}{a[1]}" for a in dl[0]) if len(dl) == 1 else "|".join(
        "·".join(f"{a[0] or '_'}{a[1]}" for a in seg) for seg in dl) for dl in lab) + "]"


def run_propagation(gm: fx.GraphModule, seeds: Seeds) -> tuple[dict, dict]:
    labels = dict(seeds.labels)
    lost: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if node not in labels and isinstance(node.meta.get("val"), torch.Tensor):
                labels[node] = opaque_label(node.meta["val"].shape)
            continue
        if node.op == "get_attr":
            v = node.meta.get("val")
            if isinstance(v, torch.Tensor):
                labels[node] = opaque_label(v.shape)
            continue
        if node.op != "call_function":
            continue
        out = propagate(node, labels)
        if out is None:  # an op the analysis does not understand, or sizes that do not factor
            v = node.meta.get("val")
            if isinstance(v, torch.Tensor):
                out = opaque_label(v.shape)
            elif isinstance(v, (tuple, list)):
                out = [opaque_label(x.shape) if isinstance(x, torch.Tensor) else None for x in v]
            if any(axes.has_tokens(labels.get(a)) for a in node.all_input_nodes):
                lost[node] = str(node.target)
        labels[node] = out
    return labels, lost


def _layout(dl: axes.DimLabel) -> tuple[Layout | None, str | None]:
    segs = []
    for seg in dl:
        names = tuple(a[0] for a in seg)
        size = axes.seg_size(seg)
        if names in (("y", "x"), ("f", "y", "x")):
            segs.append(Segment("image", size, tuple(a[1] for a in seg)))
        elif len(names) == 1 and names[0] and names[0].startswith("t:"):
            segs.append(Segment("text", size, name=names[0][2:]))
        elif all(n is None for n in names):
            segs.append(Segment("other", size))
        else:
            return None, "token axes " + "·".join(f"{n}{a[1]}" for n, a in zip(names, seg)) + " are not a row-major lattice"
    return Layout(tuple(segs)), None


def _nearest_loss(node: fx.Node, lost: dict) -> str | None:
    seen, frontier = set(), [node]
    while frontier:
        nxt = []
        for n in frontier:
            for a in n.all_input_nodes:
                if a in seen:
                    continue
                seen.add(a)
                if a in lost:
                    return f"{lost[a]} ({a.name})"
                nxt.append(a)
        frontier = nxt
    return None


def classify(site: Site, labels: dict, lost: dict, missing: str | None = None) -> None:
    """Set site.layout / kv_layout, kind (self | cross | joint) and, if it cannot be reduced, skip_reason."""
    q, k = site.node.args[0], site.node.args[1]
    ql, kl = labels.get(q), labels.get(k)
    qlay, why_q = _layout(ql[-2]) if isinstance(ql, tuple) else (None, None)
    klay, _ = _layout(kl[-2]) if isinstance(kl, tuple) else (None, None)
    site.layout, site.kv_layout = qlay, klay
    if qlay is not None and klay is not None:  # keys from the same token source as the queries?
        same_source = klay.segments == qlay.segments
    else:  # undecided: judge by length, for the report only
        same_source = site.kv_len == site.q_len
    mixed = qlay is not None and qlay.text_tokens > 0 and bool(qlay.image_segments())
    site.kind = ("joint" if mixed else "self") if same_source else "cross"
    if site.q_len == 1:
        site.skip_reason = "query length 1 (pooled query): not a lattice"
    elif qlay is not None and all(seg.kind == "text" for seg in qlay.segments):
        site.skip_reason = "text-only sequence: no image lattice"
    elif qlay is None or not qlay.image_segments():
        site.lost_at = _nearest_loss(q, lost)
        site.skip_reason = (f"layout unknown: {why_q}" if why_q else "layout unknown") + (
            f"; lost at {site.lost_at}" if site.lost_at else
            "; no image lattice reaches the query" + (f": {missing}" if missing else ""))
    elif len(qlay.image_segments()) > 1:
        site.skip_reason = "more than one image lattice in the sequence"


def apply_override(site: Site, override) -> None:
    """The schedule's `layout:` for a site the analysis could not decide."""
    import fnmatch

    if override.modules is not None and not fnmatch.fnmatchcase(site.module, override.modules):
        return
    n_img = math.prod(override.grid)
    if site.q_len != n_img + override.text_tokens:
        raise LayoutError(
            f"layout override grid {override.grid} + text_tokens {override.text_tokens} = "
            f"{n_img + override.text_tokens} tokens does not fit site {site.module} (query length {site.q_len})")
    img = Segment("image", n_img, tuple(override.grid))
    segs = [img]
    if override.text_tokens:
        txt = Segment("text", override.text_tokens, name="override")
        segs = [txt, img] if override.text_position == "before" else [img, txt]
    site.layout = Layout(tuple(segs))
    site.kind = "joint" if override.text_tokens and site.kv_len == site.q_len else (
        "self" if site.kv_len == site.q_len else "cross")
    site.kv_layout = site.layout if site.kv_len == site.q_len else None
    site.skip_reason = None
    site.extra["layout_source"] = "override"


def _undecided(site: Site) -> bool:
    return (site.skip_reason or "").startswith("layout unknown")


def infer_layout(gm: fx.GraphModule, sites: list[Site], kwargs: dict, in_channels: int | None = None,
                 override=None) -> Seeds:
    seeds = seed_inputs(gm, kwargs, in_channels)
    labels, lost = run_propagation(gm, seeds)
    for s in sites:
        classify(s, labels, lost, seeds.missing)
        if override is not None and _undecided(s):
            apply_override(s, override)
        if _undecided(s):
            warnings.warn(f"ditreduce: {s.module}: {s.skip_reason}. Set the schedule's `layout:` to reduce it.",
                          stacklevel=3)
    return seeds
