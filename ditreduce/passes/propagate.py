"""Forward propagation of axis labels (see axes.py) through functional ATen ops."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

from . import axes
from .axes import Label, opaque, opaque_label

aten = torch.ops.aten


def _shape(n):
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    return axes.static_shape(v.shape) if isinstance(v, torch.Tensor) else None


def _lab(labels, n):
    if not isinstance(n, fx.Node):
        return None
    lab = labels.get(n)
    if lab is None or isinstance(lab, list):
        return None
    return lab


def _dim(d, rank):
    return d % rank if rank else 0


SAME_AS_FIRST = {
    aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default, aten._to_copy.default,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.type_as.default, aten.dropout.default,
    aten.lift_fresh_copy.default, aten.empty_like.default, aten.zeros_like.default, aten.ones_like.default,
    aten.full_like.default, aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten.layer_norm.default,
    aten.rms_norm.default, aten.group_norm.default, aten.gelu.default, aten.silu.default, aten.relu.default,
    aten.slice_scatter.default, aten.select_scatter.default, aten._safe_softmax.default, aten.native_dropout.default,
}
SAME_FIRST_OF_TUPLE = {aten.native_layer_norm.default, aten.native_group_norm.default, aten.native_dropout.default}


def _ew(node: fx.Node, labels) -> Label | None:
    out = _shape(node)
    if out is None:
        return None
    ins = [(_shape(a), _lab(labels, a)) for a in node.args if isinstance(a, fx.Node)]
    ins = [(s, l) for s, l in ins if s is not None and l is not None]
    return axes.broadcast(out, ins) if ins else opaque_label(out)


def _conv(node, labels):
    x, w = node.args[0], node.args[1]
    xl, xs, ws, out = _lab(labels, x), _shape(x), _shape(w), _shape(node)
    if xl is None:
        return None
    if node.target == aten.convolution.default:
        stride, padding, transposed = node.args[3], node.args[4], node.args[6]
        if transposed:
            return opaque_label(out)
    else:
        stride = node.args[3] if len(node.args) > 3 else 1
        padding = node.args[4] if len(node.args) > 4 else 0
    nsp = len(xs) - 2

    def per_dim(v, default):
        if isinstance(v, (list, tuple)):
            return list(v) * (nsp // len(v)) if v else [default] * nsp
        return [v] * nsp

    stride, padding = per_dim(stride, 1), per_dim(padding, 0)
    res = [xl[0], opaque(out[1])]
    for d in range(nsp):
        dl, k, s, p = xl[2 + d], ws[2 + d], stride[d], padding[d]
        if out[2 + d] == xs[2 + d]:  # same-size conv: positions stay aligned
            res.append(dl)
        elif k == s and p == 0 and len(dl) == 1 and len(dl[0]) == 1 and xs[2 + d] % s == 0:  # patch embedding
            res.append(axes.plain((dl[0][0][0], out[2 + d])))
        else:
            res.append(opaque(out[2 + d]))
    return tuple(res)


def _matmul(node, labels):
    a, b = node.args[0], node.args[1]
    al, bl, out = _lab(labels, a), _lab(labels, b), _shape(node)
    if al is None or bl is None or len(out) < 2:
        return None
    batch_shape = out[:-2]
    batch = axes.broadcast(batch_shape, [(_shape(a)[:-2], al[:-2]), (_shape(b)[:-2], bl[:-2])])
    return batch + (al[-2], bl[-1])


def _slice_like(xl, rank, dim, start, end):
    dim = _dim(dim, rank)
    sl = axes.slice_dim(xl[dim], start, end)
    return None if sl is None else xl[:dim] + (sl,) + xl[dim + 1:]


def _split(node, labels):
    x = node.args[0]
    xl, xs = _lab(labels, x), _shape(x)
    if xl is None:
        return None
    dim = _dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), len(xs))
    if node.target == aten.split_with_sizes.default:
        sizes = list(node.args[1])
    else:
        step = node.args[1]
        sizes = [min(step, xs[dim] - i) for i in range(0, xs[dim], step)]
    out, pos = [], 0
    for s in sizes:
        lab = _slice_like(xl, len(xs), dim, pos, pos + s)
        out.append(lab if lab is not None else opaque_label(xs[:dim] + (s,) + xs[dim + 1:]))
        pos += s
    return out


RULES: dict = {}


def rule(*ops):
    """Register fn(node, labels) -> Label | list | None as the propagation rule of `ops`."""
    def deco(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return deco


def unary(*ops):
    """A rule on the label of the first input (None when that input carries no label)."""
    def deco(fn):
        def on_first(node, labels):
            xl = _lab(labels, node.args[0])
            return None if xl is None else fn(node, xl)
        rule(*ops)(on_first)
        return fn
    return deco


def _reduced(xl, out_shape, dims, keep):
    """Labels after reducing `dims` (None: all) with or without keepdim."""
    if dims is None:
        return opaque_label(out_shape)
    rank = len(xl)
    dims = {_dim(d, rank) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    return tuple(opaque(1) if d in dims else xl[d] for d in range(rank) if keep or d not in dims)


@unary(aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.var.correction, aten.std.correction)
def _reduce_dims(node, xl):
    dims = node.args[1] if len(node.args) > 1 else None
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return _reduced(xl, _shape(node), dims, keep)


@unary(aten.linalg_vector_norm.default)  # (self, ord, dim, keepdim): F.normalize's per-head q / k norm
def _vector_norm(node, xl):
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    keep = node.args[3] if len(node.args) > 3 else node.kwargs.get("keepdim", False)
    return _reduced(xl, _shape(node), dims, keep)


@rule(operator.getitem)
def _getitem(node, labels):
    src = labels.get(node.args[0])
    return src[node.args[1]] if isinstance(src, list) and node.args[1] < len(src) else None


unary(*SAME_AS_FIRST)(lambda node, xl: xl)


@unary(*SAME_FIRST_OF_TUPLE)
def _first_of_tuple(node, xl):
    vals = node.meta.get("val")
    return [xl] + [opaque_label(v.shape) for v in vals[1:]] if isinstance(vals, (tuple, list)) else None


unary(aten.view.default, aten._unsafe_view.default, aten.reshape.default)(
    lambda node, xl: axes.reshape(xl, _shape(node)))
unary(aten.view_as_complex.default)(lambda node, xl: xl[:-1])
unary(aten.view_as_real.default)(lambda node, xl: xl + (opaque(2),))
unary(aten.permute.default)(lambda node, xl: tuple(xl[_dim(d, len(xl))] for d in node.args[1]))
unary(aten.t.default)(lambda node, xl: tuple(reversed(xl)))
unary(aten.select.int)(lambda node, xl: xl[:_dim(node.args[1], len(xl))] + xl[_dim(node.args[1], len(xl)) + 1:])
unary(aten.linear.default, aten.scaled_dot_product_attention.default)(
    lambda node, xl: xl[:-1] + (opaque(_shape(node)[-1]),))  # sdpa: the output takes the query's tokens
rule(aten.addmm.default)(lambda node, labels: None if _lab(labels, node.args[1]) is None
                         else (_lab(labels, node.args[1])[0], opaque(_shape(node)[-1])))
rule(aten.matmul.default, aten.bmm.default, aten.mm.default)(_matmul)
rule(aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)(_conv)
unary(aten.var_mean.correction)(lambda node, xl: [_reduce_dims(node, xl)] * 2)
rule(aten.split_with_sizes.default, aten.split.Tensor)(_split)
rule(aten.copy.default, aten.where.self, aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.lerp.Scalar)(_ew)


@unary(aten.transpose.int)
def _transpose(node, xl):
    a, b = _dim(node.args[1], len(xl)), _dim(node.args[2], len(xl))
    lst = list(xl)
    lst[a], lst[b] = lst[b], lst[a]
    return tuple(lst)


@unary(aten.unsqueeze.default)
def _unsqueeze(node, xl):
    d = node.args[1] % (len(xl) + 1)
    return xl[:d] + (opaque(1),) + xl[d:]


@unary(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(node, xl):
    xs = _shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else [i for i, s in enumerate(xs) if s == 1]
    dims = {_dim(d, len(xl)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    return tuple(lab for i, lab in enumerate(xl) if not (i in dims and xs[i] == 1))


@unary(aten.expand.default, aten.repeat.default)
def _expand(node, xl):
    xs, out = _shape(node.args[0]), _shape(node)
    lead = len(out) - len(xs)
    return tuple(opaque(out[i]) if i < lead or xs[i - lead] != out[i] else xl[i - lead] for i in range(len(out)))


@unary(aten.repeat_interleave.self_int)
def _repeat_interleave(node, xl):
    """GQA's k / v head repeat: the repeated dim becomes opaque, the others keep their labels."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if dim is None:
        return None
    d = _dim(dim, len(xl))
    return xl[:d] + (opaque(_shape(node)[d]),) + xl[d + 1:]


@unary(aten.unbind.int)
def _unbind(node, xl):
    d = _dim(node.args[1] if len(node.args) > 1 else 0, len(xl))
    return [xl[:d] + xl[d + 1:] for _ in range(_shape(node.args[0])[d])]


@unary(aten.slice.Tensor)
def _slice(node, xl):
    args, xs = node.args, _shape(node.args[0])
    d = _dim(args[1] if len(args) > 1 else 0, len(xs))
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    end = args[3] if len(args) > 3 and args[3] is not None else xs[d]
    step = args[4] if len(args) > 4 else 1
    start, end = start + xs[d] if start < 0 else start, end + xs[d] if end < 0 else end
    if step != 1:  # a strided slice keeps no segment whole
        return None if axes.dim_has_tokens(xl[d]) else xl[:d] + (opaque(_shape(node)[d]),) + xl[d + 1:]
    return _slice_like(xl, len(xs), d, start, end)


@rule(aten.index.Tensor)
def _index(node, labels):
    """x[..., sel, ...] along one dim: sel a boolean mask over that dim, or the indices of one read at run
    time (`nonzero(mask)`). The selected tokens of a text dim stay text, their count only known at run time
    (the unpadded text of a sample); any other dim selected this way is opaque."""
    xl, idx = _lab(labels, node.args[0]), node.args[1]
    picked = [(d, i) for d, i in enumerate(idx) if i is not None]
    if xl is None or len(picked) != 1 or not isinstance(picked[0][1], fx.Node):
        return None
    d, sel = picked[0]
    val = sel.meta.get("val")
    size = _shape(node)[d]
    if not isinstance(val, torch.Tensor) or val.dim() != 1 or (val.dtype != torch.bool and not axes.is_run_time(size)):
        return None
    atoms = xl[d][0] if len(xl[d]) == 1 else ()
    text = len(atoms) == 1 and str(atoms[0][0]).startswith("t:")
    return xl[:d] + (axes.plain((atoms[0][0], size)) if text else opaque(size),) + xl[d + 1:]


@rule(aten.einsum.default)
def _einsum(node, labels):
    """Each output letter takes the label of that letter's dim in the inputs (a token-carrying one first)."""
    eq = node.args[0].replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    ins, out = eq.split("->")
    by_letter: dict = {}
    for spec, arg in zip(ins.split(","), node.args[1]):
        lab = _lab(labels, arg)
        if lab is None or len(lab) != len(spec):
            return None
        for letter, dl in zip(spec, lab):
            if letter not in by_letter or (not axes.dim_has_tokens(by_letter[letter]) and axes.dim_has_tokens(dl)):
                by_letter[letter] = dl
    shape = _shape(node)
    return tuple(by_letter[c] if axes.dim_size(by_letter[c]) == shape[i] else opaque(shape[i]) for i, c in enumerate(out))


@rule(aten.cat.default)
def _cat(node, labels):
    tensors = [a for a in node.args[0] if _shape(a) is not None]
    out = _shape(node)
    dim = _dim(node.args[1] if len(node.args) > 1 else 0, len(out))
    labs = [_lab(labels, a) for a in tensors]
    if any(lab is None for lab in labs):
        return None
    others = axes.broadcast(out[:dim] + out[dim + 1:], [(_shape(a)[:dim] + _shape(a)[dim + 1:], lab[:dim] + lab[dim + 1:])
                                                       for a, lab in zip(tensors, labs)])
    return others[:dim] + (axes.concat([lab[dim] for lab in labs if len(lab) == len(out)]),) + others[dim:]


@rule(aten.stack.default)
def _stack(node, labels):
    out = _shape(node)
    dim = _dim(node.args[1] if len(node.args) > 1 else 0, len(out))
    tensors = list(node.args[0])
    labs = [_lab(labels, a) for a in tensors]
    if any(lab is None for lab in labs):
        return None
    inner = axes.broadcast(_shape(tensors[0]), [(_shape(a), lab) for a, lab in zip(tensors, labs)])
    return inner[:dim] + (opaque(len(tensors)),) + inner[dim:]


def propagate(node: fx.Node, labels: dict) -> "Label | list | None":
    """The label(s) of node's output, or None when this op is not understood (labels lost)."""
    fn = RULES.get(node.target)
    if fn is not None:
        return fn(node, labels)
    if isinstance(node.target, torch._ops.OpOverload) and torch.Tag.pointwise in node.target.tags:
        return _ew(node, labels)
    return None
