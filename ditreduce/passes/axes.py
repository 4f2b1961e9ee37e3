"""The axis algebra layout inference runs on.

Every dimension of every tensor carries a label: the named axes it is made of.
    Atom     (name, size)          name: "y", "x", "f" (lattice), "t:<input>" (text), "b" (batch),
                                   "y~" (the low part of a split axis) or None (opaque)
    Seg      tuple[Atom, ...]      a row-major product of atoms
    DimLabel tuple[Seg, ...]       segments concatenated along the dim (e.g. [text | image])
    Label    tuple[DimLabel, ...]  one per tensor dim

A size only known at run time (torch.export's unbacked SymInt, e.g. the length of text[mask]) is read as
a stand-in: one distinct prime above RUN_TIME_BASE per symbol (static_size), so the algebra stays on ints
and a run-time count is never mistaken for a static one (is_run_time).
"""
from __future__ import annotations

import math

import sympy
import torch

Atom = tuple  # (name | None, size)
Seg = tuple
DimLabel = tuple
Label = tuple


RUN_TIME_BASE = 10 ** 12
_STAND_INS: dict[str, int] = {}   # symbol name -> its stand-in size


def _stand_in(symbol) -> int:
    name = str(symbol)
    if name not in _STAND_INS:
        _STAND_INS[name] = int(sympy.nextprime(max(_STAND_INS.values(), default=RUN_TIME_BASE)))
    return _STAND_INS[name]


def static_size(d) -> int:
    """A dimension size as an int; a symbolic one with each of its symbols replaced by that symbol's stand-in."""
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr.xreplace({s: _stand_in(s) for s in expr.free_symbols}))
    return int(d)


def static_shape(shape) -> tuple[int, ...]:
    return tuple(static_size(d) for d in shape)


def is_run_time(size: int) -> bool:
    """Does a size involve a count only known at run time?"""
    return size >= RUN_TIME_BASE


def is_stand_in(size: int) -> bool:
    """Is a size exactly one run-time count (not a sum or product with other sizes)?"""
    return size in _STAND_INS.values()


def opaque(size: int) -> DimLabel:
    return (((None, int(size)),),)


def opaque_label(shape) -> Label:
    return tuple(opaque(s) for s in shape)


def seg_size(seg: Seg) -> int:
    return math.prod(a[1] for a in seg)


def dim_size(dl: DimLabel) -> int:
    return sum(seg_size(s) for s in dl)


def norm_seg(seg) -> Seg:
    out = []
    for name, size in seg:
        if size == 1:
            continue
        if name is None and out and out[-1][0] is None:
            out[-1] = (None, out[-1][1] * size)
        else:
            out.append((name, size))
    return tuple(out) or ((None, 1),)


def plain(*atoms: Atom) -> DimLabel:
    return (norm_seg(atoms),)


def is_token_atom(name) -> bool:
    return name is not None and name != "b"


def has_tokens(x) -> bool:
    """Does a Label (or list of Labels) carry any lattice / text axis?"""
    if x is None:
        return False
    if isinstance(x, list):
        return any(has_tokens(t) for t in x)
    return any(is_token_atom(a[0]) for dl in x for seg in dl for a in seg)


def dim_has_tokens(dl: DimLabel) -> bool:
    return any(is_token_atom(a[0]) for seg in dl for a in seg)


def reshape(label: Label, out_shape) -> Label | None:
    """Labels after view/reshape: split and merge axes by size. None if the sizes do not factor."""
    stream: list = []
    for dl in label:
        if len(dl) > 1:
            stream.append(("#", dl))
        else:
            stream.extend(a for a in dl[0] if a[1] != 1)
    out, i = [], 0
    for size in out_shape:
        size = int(size)
        if size == 1:
            out.append(opaque(1))
            continue
        need, atoms = size, []
        while need > 1:
            if i >= len(stream):
                return None
            a = stream[i]
            if a[0] == "#":
                if atoms or dim_size(a[1]) != need:
                    return None
                out.append(a[1])
                i += 1
                need = 0
                break
            name, asz = a
            if need % asz == 0:
                atoms.append(a)
                need //= asz
                i += 1
            elif asz % need == 0:
                atoms.append((name, need))
                stream[i] = (None if name is None else name.rstrip("~") + "~", asz // need)
                need = 1
            else:
                return None
        if need == 1:
            out.append((norm_seg(atoms),))
    if i != len(stream):
        return None
    return tuple(out)


def slice_dim(dl: DimLabel, start: int, end: int) -> DimLabel | None:
    """The label of dl[start:end] (step 1): whole segments, or a part of one opaque or batch segment."""
    size = dim_size(dl)
    start, end = max(0, min(start, size)), max(0, min(end, size))
    if start == 0 and end == size:
        return dl
    pos, picked = 0, []
    for seg in dl:
        s_lo, s_hi = pos, pos + seg_size(seg)
        pos = s_hi
        if s_hi <= start or s_lo >= end:
            continue
        if s_lo >= start and s_hi <= end:
            picked.append(seg)
        elif not any(is_token_atom(a[0]) for a in seg):   # opaque or batch (a sample of a per-sample loop)
            picked.append(((None, min(end, s_hi) - max(start, s_lo)),))
        else:
            return None
    return tuple(picked) if picked else opaque(end - start)


def concat(dls: list[DimLabel]) -> DimLabel:
    segs = [seg for dl in dls if dim_size(dl) > 0 for seg in dl]
    merged = []
    for seg in segs:  # adjacent opaque segments fold into one
        if merged and all(a[0] is None for a in seg) and all(a[0] is None for a in merged[-1]):
            merged[-1] = ((None, seg_size(merged[-1]) + seg_size(seg)),)
        else:
            merged.append(seg)
    return tuple(merged)


def broadcast(out_shape, inputs: list[tuple[tuple, Label]]) -> Label:
    """Elementwise: each output dim takes the first token-carrying label among inputs of that size."""
    rank = len(out_shape)
    out = []
    for d in range(rank):
        size = int(out_shape[d])
        chosen = None
        for shape, lab in inputs:
            j = d - (rank - len(shape))
            if j < 0 or int(shape[j]) != size:
                continue
            if chosen is None or (not dim_has_tokens(chosen) and dim_has_tokens(lab[j])):
                chosen = lab[j]
        out.append(chosen if chosen is not None else opaque(size))
    return tuple(out)


AXES = "ditreduce_axes"   # node.meta key: a node's axis labels, left by the pipeline's layout pass


def axis_labels(gm) -> dict:
    """{node: axis labels} of an analysed graph (or a copy of it: node.meta travels with copied nodes)."""
    return {n: n.meta[AXES] for n in gm.graph.nodes if AXES in n.meta}
