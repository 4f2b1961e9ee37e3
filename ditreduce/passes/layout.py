"""Pass 3 — layout inference: which positions of each attention sequence are image tokens (and their
lattice H×W or F×H×W) and which are text, by dataflow from the inputs (see axes.py, propagate.py).

Seeds (found by structure, names only break ties):
- the latent: a floating input [B, C, H, W] / [B, H, W, C] / [B, C, F, H, W] / [B, F, C, H, W] / [B, F, H, W, C] (orders that
  put `in_channels` on the channel dim first), or packed tokens [B, N, C] whose N is a lattice the call
  states (position ids of any name, `img_shapes`, integer size arguments — see inputs.py). Where several
  readings exist, the one that brings a lattice to the most attention queries wins.
- text: rank-3 (or [B, T, layers, C]) floating inputs named like text (`encoder_*`, `context`, `text*`, `prompt*`, ...).
Where the labels are lost, the site is skipped and the op that stopped the analysis is named.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from . import axes
from .axes import opaque, opaque_label, plain
from .inputs import lattice_for_tokens, lattice_from_ids, lattice_from_shapes  # noqa: F401 (re-exported)
from .match_attention import SDPA
from .propagate import propagate
from .site import Layout, Segment, Site, module_of, source_of


from ..errors import LayoutError  # noqa: F401  (re-exported)


@dataclass
class Seeds:
    labels: dict            # placeholder node -> Label
    notes: list[str]        # what was seeded and from where
    missing: str | None = None  # why the latent carries no lattice, if it does not
    latent: str | None = None   # the placeholder seeded as the latent
    propagated: dict = field(default_factory=dict)  # every node -> its labels (infer_layout fills it)


def _named(name: str, words) -> bool:
    """Does a word of the input's name (split at `_`) start with one of `words`?"""
    return bool(re.search(r"(^|_)(" + "|".join(words) + ")", name.lower()))


LATENT_NAMES = ("hidden_states", "x", "latent", "latents", "sample", "z", "x_t", "xt", "img", "image", "video",
                "noisy_latents", "input", "inputs")
TEXT_WORDS = ("encoder", "context", "text", "txt", "prompt", "caption", "cap_feat", "clip", "t5", "llm", "cross")
NOT_TOKENS = ("mask", "rope", "rotary", "freq", "cos", "sin", "pos", "ids", "coord")


def _lattice_dim(lattice: tuple[int, ...]) -> axes.DimLabel:
    names = ("y", "x") if len(lattice) == 2 else ("f", "y", "x")
    return plain(*zip(names, lattice))


def _latent_candidates(s: tuple, in_channels: int | None, kwargs: dict) -> list[tuple[tuple, str]]:
    """(label, how) for each reading of a floating input as the latent, the in_channels one first."""
    b = plain(("b", s[0]))
    out = []
    if len(s) == 4:
        first = ((b, opaque(s[1]), plain(("y", s[2])), plain(("x", s[3]))), "[B, C, H, W]")
        last = ((b, plain(("y", s[1])), plain(("x", s[2])), opaque(s[3])), "[B, H, W, C]")
        out = [last, first] if in_channels is not None and s[3] == in_channels != s[1] else [first, last]
    elif len(s) == 5:  # [B, C, F, H, W] (Wan) or [B, F, C, H, W] (CogVideoX)
        cf = ((b, opaque(s[1]), plain(("f", s[2])), plain(("y", s[3])), plain(("x", s[4]))), "[B, C, F, H, W]")
        fc = ((b, plain(("f", s[1])), opaque(s[2]), plain(("y", s[3])), plain(("x", s[4]))), "[B, F, C, H, W]")
        fl = ((b, plain(("f", s[1])), plain(("y", s[2])), plain(("x", s[3])), opaque(s[4])), "[B, F, H, W, C]")
        out = [fc, cf, fl] if in_channels is not None and s[2] == in_channels != s[1] else [cf, fc, fl]
        if in_channels is not None and s[4] == in_channels not in (s[1], s[2]):
            out = [fl, cf, fc]
    elif len(s) == 3:
        found = lattice_for_tokens(kwargs, s[1])
        if found is not None:
            out = [((b, _lattice_dim(found[0]), opaque(s[2])), f"packed [B, N, C], {found[1]}")]
    return out


def _name_rank(name: str) -> int:
    low = name.lower()
    return LATENT_NAMES.index(low) if low in LATENT_NAMES else len(LATENT_NAMES)


def _lattice_sites(gm: fx.GraphModule, seed: dict) -> int:
    """How many attention queries carry an image lattice when only `seed` is seeded."""
    labels, _ = run_propagation(gm, Seeds(seed, []))
    count = 0
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target == SDPA:
            ql = labels.get(n.args[0])
            if isinstance(ql, tuple) and len(ql) >= 2:
                lay, _ = _layout(ql[-2])
                count += bool(lay is not None and lay.image_segments())
    return count


def seed_inputs(gm: fx.GraphModule, kwargs: dict, in_channels: int | None) -> Seeds:
    """Seed the latent (found by structure: the floating rank-4/5 input, or a packed [B, N, C] one whose
    N is a lattice the call states, that brings a lattice to the most attention queries; its name and
    `in_channels` only break ties) and the text inputs (rank-3 floating inputs named like text)."""
    inputs = [(n, n.meta["val"]) for n in gm.graph.nodes
              if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)]
    floating = [(n, v) for n, v in inputs if v.is_floating_point() and not _static_unknown(v)]
    cands = []
    for order, (node, val) in enumerate(floating):
        if _named(node.name, TEXT_WORDS + NOT_TOKENS):
            continue
        for rank, (lab, how) in enumerate(_latent_candidates(tuple(val.shape), in_channels, kwargs)):
            cands.append((node, lab, how, (_name_rank(node.name), rank, order)))
    labels, notes, missing, latent = {}, [], None, None
    if not cands:
        packed = [n.name for n, v in floating if v.dim() == 3 and not _named(n.name, TEXT_WORDS)]
        missing = ("no floating [B, C, H, W] / [B, C, F, H, W] input" + (
            f"; packed tokens {', '.join(packed)} and no lattice stated by the call (position ids of a row-major "
            "lattice, img_shapes, or integer size arguments whose product is the token count)" if packed else ""))
    else:
        best = _best_candidate(gm, cands)
        node, lab, how, _ = best
        labels[node], latent = lab, node.name
        notes.append(f"latent {node.name} {list(node.meta['val'].shape)} read as {how}: {_describe(lab)}")
    batch = labels[next(iter(labels))][0][0][0][1] if labels else None
    for node, val in floating:
        if node.name == latent or val.dim() not in (3, 4) or not _named(node.name, TEXT_WORDS):
            continue
        if _named(node.name, NOT_TOKENS) or (batch is not None and val.shape[0] not in (batch, 1)):
            continue
        s = tuple(val.shape)  # [B, T, C] or [B, T, layers, C] (Krea2's stack of text-encoder layers)
        labels[node] = (plain(("b", s[0])), plain((f"t:{node.name}", s[1])), *(opaque(d) for d in s[2:]))
        notes.append(f"{node.name} {list(s)} seeded as text")
    if missing is not None:
        notes.append(missing)
    return Seeds(labels, notes, missing, latent)


def _best_candidate(gm: fx.GraphModule, cands: list) -> tuple:
    """The candidate that brings a lattice to the most attention queries; ties by name / order rank.
    Candidates are tried in rank order and the search stops at one that reaches every query."""
    cands = sorted(cands, key=lambda c: c[3])
    if len(cands) == 1:
        return cands[0]
    total = sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target == SDPA)
    best, best_score = cands[0], -1
    for c in cands:
        score = _lattice_sites(gm, {c[0]: c[1]})
        if score > best_score:
            best, best_score = c, score
        if score == total:
            break
    return best


def _static_unknown(v: torch.Tensor) -> bool:
    """A shape with data-dependent (unbacked) sizes: nothing to seed."""
    return not all(isinstance(d, int) for d in v.shape)


def _describe(lab) -> str:
    return "[" + ", ".join("·".join(f"{a[0] or '_'}{a[1]}" for a in dl[0]) if len(dl) == 1 else "|".join(
        "·".join(f"{a[0] or '_'}{a[1]}" for a in seg) for seg in dl) for dl in lab) + "]"


def _opaque_val(v):
    """Opaque labels for a node's value (a run-time size as its stand-in, see axes.static_size)."""
    if isinstance(v, torch.Tensor):
        return opaque_label(axes.static_shape(v.shape))
    if isinstance(v, (tuple, list)):
        return [_opaque_val(x) if isinstance(x, torch.Tensor) else None for x in v]
    return None


def run_propagation(gm: fx.GraphModule, seeds: Seeds) -> tuple[dict, dict]:
    """Labels of every node from the seeds; `lost` names the ops where token labels were dropped (an op
    the analysis does not understand, sizes that do not factor, or a data-dependent shape)."""
    labels = dict(seeds.labels)
    lost: dict[fx.Node, str] = {}
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr"):
            if node not in labels:
                labels[node] = _opaque_val(node.meta.get("val"))
            continue
        if node.op != "call_function":
            continue
        v = node.meta.get("val")
        try:
            out = propagate(node, labels)
            why = str(node.target)
        except Exception as e:  # noqa: BLE001 — a rule that cannot read this node loses the labels here
            out, why = None, f"{node.target} ({type(e).__name__})"
        if out is None:
            out = _opaque_val(v)
            if _has_unbacked(v):
                why = f"{node.target}: data-dependent shape"
            if _is_tensor(v) and any(axes.has_tokens(labels.get(a)) for a in node.all_input_nodes):
                lost[node] = why
        labels[node] = out
    return labels, lost


def _is_tensor(v) -> bool:
    """A tensor value, or a tuple of them (a size read off a tensor carries no tokens)."""
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and any(isinstance(x, torch.Tensor) for x in v))


def _has_unbacked(v) -> bool:
    if isinstance(v, torch.Tensor):
        return _static_unknown(v)
    if isinstance(v, (tuple, list)):
        return any(_has_unbacked(x) for x in v)
    return False


def _layout(dl: axes.DimLabel) -> tuple[Layout | None, str | None]:
    segs = []
    for seg in dl:
        names = tuple(a[0] for a in seg)
        size = axes.seg_size(seg)
        if axes.is_run_time(size):
            if len(names) == 1 and str(names[0]).startswith("t:") and axes.is_stand_in(size):
                segs.append(Segment("text", 0, name=names[0][2:], run_time=True))
                continue
            return None, ("a token count only known at run time outside text (e.g. a boolean-mask selection of "
                          "image tokens)")
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
                if a in lost:  # the op, then where the user wrote it (source line, module path)
                    src = source_of(a)
                    return f"{lost[a]} ({(src + ' ') if src else ''}in {module_of(a) or 'the top-level forward'})"
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
    if site.run_time_reason is not None:
        site.skip_reason = _run_time_refusal(site)
        if site.skip_reason is not None:
            return
    if qlay is not None and klay is not None:  # keys from the same token source as the queries?
        same_source = klay.segments == qlay.segments
    else:  # undecided: judge by length, for the report only
        same_source = site.kv_len == site.q_len
    mixed = qlay is not None and any(seg.kind == "text" for seg in qlay.segments) and bool(qlay.image_segments())
    site.kind = ("joint" if mixed else "self") if same_source else "cross"
    if site.q_len == 1:
        site.skip_reason = "query length 1 (pooled query): not a lattice"
    elif qlay is not None and all(seg.kind == "text" for seg in qlay.segments):
        site.skip_reason = "text-only sequence: no image lattice"
    elif why_q and all(a[0] == "f" for seg in ql[-2] for a in seg):
        site.skip_reason = "temporal attention (the sequence runs over frames only): no image lattice"
    elif qlay is None or not qlay.image_segments():
        site.lost_at = _nearest_loss(q, lost)
        site.skip_reason = (f"layout unknown: {why_q}" if why_q else "layout unknown") + (
            f"; lost at {site.lost_at}" if site.lost_at else
            "; no image lattice reaches the query" + (f": {missing}" if missing else ""))
    elif len(qlay.image_segments()) > 1:
        site.skip_reason = "more than one image lattice in the sequence"
    elif site.kv_len == site.q_len and not axes.has_tokens(kl):
        lost_k = _nearest_loss(k, lost)
        site.lost_at = lost_k
        site.skip_reason = ("layout unknown: the keys carry no token labels" + (f"; lost at {lost_k}" if lost_k else "")
                            + f" (queries: {qlay.describe()})")


RUN_TIME_TEXT_NOTE = ("text length read per sample at run time: its image tokens are reduced in eager and inductor "
                      "(attention scope); ONNX / TensorRT export need static token counts and refuse this model")


def _run_time_refusal(site: Site) -> str | None:
    """Why a site whose token count is only known at run time cannot be reduced, or None: it can when that
    count is text (the unpadded text of a sample) on one side of a static image lattice."""
    qlay, klay = site.layout, site.kv_layout
    if qlay is None or klay is None:
        return site.run_time_reason
    if not qlay.run_time:   # image queries, run-time text keys: cross-attention (never reduced itself)
        return None
    if len(qlay.image_segments()) != 1:
        return site.run_time_reason
    if qlay.image_span()[2] == "both":
        return ("text read per sample at run time on both sides of the image: the image position is not fixed "
                "from either end of the sequence; put the text on one side")
    site.notes.append(RUN_TIME_TEXT_NOTE)
    return None


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
    site.layout_source = "override"


def _undecided(site: Site) -> bool:
    return (site.skip_reason or "").startswith("layout unknown")


def infer_layout(gm: fx.GraphModule, sites: list[Site], kwargs: dict, in_channels: int | None = None,
                 override=None) -> Seeds:
    try:
        seeds = seed_inputs(gm, kwargs, in_channels)
    except Exception as e:  # noqa: BLE001 — never a raw error: every site is skipped with this reason
        why = f"reading the inputs failed ({type(e).__name__}: {str(e)[:120]})"
        seeds = Seeds({}, [why], why)
    labels, lost = run_propagation(gm, seeds)
    seeds.propagated = labels
    for s in sites:
        if s.skip_reason is None:
            try:
                classify(s, labels, lost, seeds.missing)
            except Exception as e:  # noqa: BLE001 — never a raw torch error: the site is skipped, named
                s.skip_reason = f"layout unknown: the analysis failed here ({type(e).__name__}: {str(e)[:120]})"
        if override is not None and _undecided(s):
            apply_override(s, override)
        if _undecided(s):
            warnings.warn(f"ditreduce: {s.module}: {s.skip_reason}. Set the schedule's `layout:` to reduce it.",
                          stacklevel=3)
    return seeds
