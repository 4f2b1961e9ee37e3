"""Pass 3b — scope: how far a site's region may widen beyond the sdpa, proved on the axis labels.

For `attention+proj` the region starts at the tensor the q/k/v projections read and ends after the
output projection; `attention+cross` adds, on the same kept tokens, the queries of the block's
cross-attention (its q projection's input to after its output projection; keys / values are text and stay
whole), a second region that shares the first one's selection (RegionPlan.extra); for `block` it starts at
the block's image-token input and ends at its output, the block read by dataflow (block_nodes: what its
modules recorded plus every node on a path between them).
The region is kept only if every op inside is proved token-wise by the labels (it never mixes image
tokens across the token dimension — except the site's own sdpa, and cross-attention whose keys carry
no image tokens), so that running it on a subset of tokens computes exactly those tokens' values.
Otherwise the site falls back to the `attention` scope and the reason is recorded.

A plan is an explicit IR (RegionPlan) of node names; rewrite.py applies it to a copy of the graph.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field, replace

import torch
import torch.fx as fx

from .site import Site, block_of, module_of, where

aten = torch.ops.aten
PROJECTIONS = {aten.linear.default, aten.addmm.default, aten.mm.default}
SDPA = aten.scaled_dot_product_attention.default
# ops that act on each token on its own as long as the token dim is not among their reduced dims
TOKENWISE = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.squeeze.default, aten.expand.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
    aten.detach.default, aten._to_copy.default, aten.to.dtype, aten.type_as.default, aten.dropout.default,
    aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default, aten.bmm.default,
    aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default, aten.gelu.default,
    aten.silu.default, aten.relu.default, aten.softmax.int, aten._softmax.default, aten.mean.dim,
    aten.sum.dim_IntList, aten.amax.default, aten.var.correction, aten.var_mean.correction, aten.cat.default,
    aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default, aten.select.int, aten.unbind.int,
    aten.view_as_complex.default, aten.view_as_real.default, aten.stack.default, aten.where.self,
    aten.masked_fill.Scalar, aten.copy.default, aten.lerp.Scalar, aten.native_dropout.default,
    aten.empty_like.default, aten.zeros_like.default, aten.ones_like.default, aten.full_like.default,
    aten.slice_scatter.default, aten.select_scatter.default, operator.getitem, SDPA,
    # audited against propagate.RULES: value-preserving copies and casts, and elementwise ops
    aten.to.dtype_layout, aten.to.device, aten.lift_fresh_copy.default, aten.masked_fill.Tensor,
    # token-wise unless over the token dim: checked in _Walker.check_tokenwise (dims below)
    aten.log_softmax.int, aten._safe_softmax.default, aten.std.correction, aten.linalg_vector_norm.default,
    # token-wise only for some arguments, checked in _Walker._conditional: repeat / repeat_interleave unless
    # along the token dim (that duplicates tokens); einsum if every token letter survives to the output (else it
    # sums over tokens); group_norm only with tokens on dim 0 (its statistics span every dim after the
    # channels); convolutions only 1×1, stride 1, no padding, not transposed, tokens not on the channel dim
    # (a wider kernel mixes neighbouring tokens)
    aten.repeat.default, aten.repeat_interleave.self_int, aten.einsum.default, aten.group_norm.default,
    aten.native_group_norm.default, aten.convolution.default, aten.conv1d.default, aten.conv2d.default,
    aten.conv3d.default,
    # an index along one dim (the unpadded text of a sample) unless that dim holds the image tokens
    aten.index.Tensor,
}
# Every op propagate.RULES has a rule for is in TOKENWISE (tests/test_any_dit.py checks it); ops without a
# rule lose the labels, so a region through them is refused as "not proved token-wise".
SOFTMAXES = {aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._safe_softmax.default}
# elementwise ops without torch's pointwise tag: their operands broadcast like a pointwise op's
ELEMENTWISE = {aten.masked_fill.Tensor, aten.copy.default}
CHECKS = {aten._assert_tensor_metadata.default}
CUTS = {aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default, operator.getitem}  # export's metadata asserts: dropped from rewritten graphs
REDUCING = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.var.correction, aten.var_mean.correction,
            aten.std.correction, aten.linalg_vector_norm.default}
REDUCED_DIMS_ARG = {aten.linalg_vector_norm.default: 2}  # (self, ord, dim, ...); the others: (self, dim, ...)
CONVS = {aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default}
SIZE_ARGS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default}


@dataclass
class RegionPlan:
    """A widened region: reduce at `entry`, run `inner` on k image tokens, reconstruct at `exits`."""

    scope: str
    entry: str                     # node whose output is reduced (its uses inside the region)
    inner: list[str]               # nodes that run on the reduced tokens (sizes rewritten)
    exits: list[str]               # nodes whose reduced outputs are reconstructed for the outside
    residual: bool = False         # block scope: out = entry + reconstruct(exit − reduced entry)
    gathers: list[tuple[str, str]] = field(default_factory=list)  # (outside node, inner consumer) along tokens
    extra: list["RegionPlan"] = field(default_factory=list)  # regions sharing this one's selection (cross queries)
    kv_only: bool = False          # k/v-only methods: `inner` is the k / v projections, which feed the sdpa pooled


class ScopeRefused(Exception):
    """Why a region cannot be widened (recorded in the report; the site keeps the attention scope)."""


def image_seg(site: Site) -> tuple:
    """The label segment of the site's lattice, e.g. (("y", 32), ("x", 32))."""
    names = ("y", "x") if len(site.grid) == 2 else ("f", "y", "x")
    return tuple(zip(names, site.grid))


def token_dim(label, seg) -> int | None:
    """The dim of a label holding the image segment (None if absent)."""
    if not isinstance(label, tuple):
        return None
    for d, dl in enumerate(label):
        if any(s == seg for s in dl):
            return d
    return None


def _lattice_atoms(label, seg) -> bool:
    names = {a[0] for a in seg}
    return isinstance(label, tuple) and any(a[0] in names for dl in label for s in dl for a in s)


# the scope a site falls back to where it refuses one: a refused `block` or `attention+cross` gets
# `attention+proj` (never another approximation than the one asked), that one `attention`
NARROWER = {"block": "attention+proj", "attention+cross": "attention+proj", "attention+proj": "attention"}


def fallback_chain(scope: str) -> tuple[str, ...]:
    """The region scopes a site tries for `scope`, widest first (NARROWER's chain, down to `attention`, which
    is no region plan: the sdpa node alone)."""
    chain = []
    while scope != "attention":
        chain.append(scope)
        scope = NARROWER[scope]
    return tuple(chain)


def _dims_arg(n: fx.Node, i: int):
    dims = n.args[i] if len(n.args) > i else n.kwargs.get("dim")
    return [dims] if isinstance(dims, int) else dims


class _Walker:
    def __init__(self, gm: fx.GraphModule, labels: dict, site: Site, scope: str = "attention+proj"):
        self.gm, self.labels, self.site, self.scope = gm, labels, site, scope
        self.seg = image_seg(site)

    @property
    def hint(self) -> str:
        """What makes the site reducible anyway: the next narrower scope."""
        return self.hint_for(self.scope)

    @staticmethod
    def hint_for(scope: str) -> str:
        return f"; the site can use scope `{NARROWER[scope]}`"

    def refuse(self, n: fx.Node, why: str) -> ScopeRefused:
        return ScopeRefused(f"{where(n)} {why}{self.hint}")

    def carries(self, n) -> bool:
        if not isinstance(n, fx.Node):
            return False
        lab = self.labels.get(n)
        if isinstance(lab, list):  # split / unbind: any part
            return any(token_dim(part, self.seg) is not None for part in lab)
        return token_dim(lab, self.seg) is not None

    def tdim(self, n) -> int | None:
        return token_dim(self.labels.get(n), self.seg) if isinstance(n, fx.Node) else None

    def partial(self, n) -> bool:
        """Lattice atoms present but not as one whole segment: tokens split across dims."""
        lab = self.labels.get(n)
        parts = lab if isinstance(lab, list) else [lab]
        return any(_lattice_atoms(p, self.seg) and token_dim(p, self.seg) is None for p in parts)

    def check_tokenwise(self, n: fx.Node, allow_sdpa: set) -> None:
        if n.target not in TOKENWISE and not (isinstance(n.target, torch._ops.OpOverload)
                                              and torch.Tag.pointwise in n.target.tags):
            raise self.refuse(n, "is not proved token-wise (ditreduce has no rule showing it acts on each token "
                                 "alone)")
        if self.partial(n):
            raise self.refuse(n, "splits the image tokens across dimensions (e.g. back to the H×W lattice)")
        if n.target == SDPA:
            if n not in allow_sdpa and self.carries(n.args[1]):
                raise self.refuse(n, f"is another attention over the image tokens inside the {self.scope} region")
            mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            if mask is not None and self.carries(n.args[1]):
                raise self.refuse(n, "has an attention mask over the image tokens (it would have to be cut to the "
                                     "kept tokens)")
            return
        ins = [a for a in n.all_input_nodes if self.carries(a)]
        if n.target in REDUCING or n.target in SOFTMAXES:
            x = n.args[0]
            d = self.tdim(x)
            dims = _dims_arg(n, REDUCED_DIMS_ARG.get(n.target, 1))
            if not dims or (d is not None and any(dd % len(self.labels[x]) == d for dd in dims)):
                raise self.refuse(n, "reduces over the token dimension (a statistic over all image tokens)")
        if n.target in (aten.matmul.default, aten.bmm.default, aten.mm.default) and len(ins) == 2:
            raise self.refuse(n, "multiplies two image-token tensors (it mixes tokens)")
        if n.target in (aten.mm.default, aten.matmul.default, aten.bmm.default) and len(n.args) > 1:
            b = n.args[1]
            if self.carries(b) and self.tdim(b) == len(self.labels[b]) - 2:
                raise self.refuse(n, "contracts over the token dimension")
        why = self._conditional(n)
        if why:
            raise self.refuse(n, why)

    def _conditional(self, n: fx.Node) -> str | None:
        """Ops that are token-wise only for some arguments: why not, or None."""
        x = n.args[0] if n.args else None
        d = self.tdim(x)
        if n.target == aten.repeat.default and d is not None:
            reps = list(n.args[1])
            lead = len(reps) - len(self.labels[x])
            if reps[lead + d] != 1:
                return "repeats along the token dimension (tokens would be duplicated)"
        elif n.target == aten.repeat_interleave.self_int and d is not None:
            dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim")
            if dim is None or dim % len(self.labels[x]) == d:
                return "repeats along the token dimension (tokens would be duplicated)"
        elif n.target in (aten.group_norm.default, aten.native_group_norm.default) and d not in (None, 0):
            return "normalises over groups that span the token dimension (statistics over all image tokens)"
        elif n.target in CONVS and d is not None:
            w = n.args[1].meta.get("val") if isinstance(n.args[1], fx.Node) else None
            stride = n.args[3] if len(n.args) > 3 else 1
            pad = n.args[4] if len(n.args) > 4 else 0
            kernel_1 = w is not None and all(k == 1 for k in w.shape[2:])
            flat = lambda v: list(v) if isinstance(v, (list, tuple)) else [v]  # noqa: E731
            transposed = n.target == aten.convolution.default and n.args[6]
            if d == 1 or transposed or not kernel_1 or any(v != 1 for v in flat(stride)) or any(flat(pad)):
                return "convolves neighbouring image tokens (only a 1×1 convolution is token-wise)"
        elif n.target == aten.einsum.default:
            return self._einsum(n)
        elif n.target == aten.index.Tensor and d is not None:
            picked = [j for j, i in enumerate(n.args[1]) if i is not None]
            if len(picked) != 1 or picked[0] == d:
                return "indexes the image tokens (a mask or index selection changes which tokens exist)"
        return None

    def _einsum(self, n: fx.Node) -> str | None:
        eq = n.args[0].replace(" ", "")
        ops = list(n.args[1])
        if "->" not in eq or "..." in eq:
            return "is an einsum with an implicit output or `...`: which dims it sums is not proved"
        ins, out = eq.split("->")
        specs = ins.split(",")
        letters = set()
        for spec, a in zip(specs, ops):
            d = self.tdim(a)
            if d is not None:
                if spec[d] not in out:
                    return "sums over the token dimension"
                letters.add(spec[d])
        for spec, a in zip(specs, ops):
            v = a.meta.get("val") if isinstance(a, fx.Node) else None
            if self.tdim(a) is None and v is not None and any(c in letters and v.shape[i] > 1 for i, c in enumerate(spec)):
                return "reads a tensor that runs along the token dimension with no token labels"
        return None


def _closure(start: list[fx.Node], step) -> set:
    """Every node reachable from `start` by `step` (node -> neighbours), start excluded unless reached."""
    seen, stack = set(), list(start)
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _users_closure(start: list[fx.Node]) -> set:
    return _closure(start, lambda n: n.users)


def _ancestors(nodes: list[fx.Node]) -> set:
    return _closure(nodes, lambda n: n.all_input_nodes)


# same-shape copies a projection may read instead of the shared tensor (model-parallel linears: a view /
# reshape / contiguous copy of the normalised hidden states per projection)
SAME_SHAPE_COPIES = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.contiguous.default,
                     aten.clone.default, aten.alias.default, aten.detach.default, aten.expand.default}


def _val_shape(n):
    v = n.meta.get("val") if isinstance(n, fx.Node) else None
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def _through_same_shape(w: _Walker, x: fx.Node) -> fx.Node:
    """The tensor behind a chain of same-shape views / reshapes / contiguous copies (same labels too)."""
    while (x.op == "call_function" and x.target in SAME_SHAPE_COPIES and isinstance(x.args[0], fx.Node)
           and _val_shape(x.args[0]) == _val_shape(x) is not None and w.labels.get(x.args[0]) == w.labels.get(x)):
        x = x.args[0]
    return x


def _projection_inputs(w: _Walker, start: fx.Node) -> set:
    """Walking back from q / k / v over image-carrying ops: the image tensors the projections read."""
    found, seen, stack = set(), set(), [start]
    while stack:
        n = stack.pop()
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        if n.target in PROJECTIONS:
            x = n.args[1] if n.target == aten.addmm.default else n.args[0]
            if w.carries(x):
                found.add(_through_same_shape(w, x))
                continue
        stack.extend(a for a in n.all_input_nodes if w.carries(a))
    return found


def _plan_between(w: _Walker, entry: fx.Node, ends: set, scope: str, allow_sdpa: set,
                  residual: bool = False) -> RegionPlan:
    """The region from `entry` to `ends`: nodes downstream of entry and upstream of an end."""
    down = _users_closure([entry])
    up = _ancestors(list(ends)) | set(ends)
    region = [n for n in w.gm.graph.nodes if n in down and n in up and n.target not in CHECKS]
    inside = set(region)
    for n in list(region):  # text parts cut out of a joint sequence: the cut runs inside, its output leaves
        for u in n.users:
            if u not in inside and u.target in CUTS and not w.carries(u) and not w.partial(u):
                inside.add(u)
                for g in u.users:
                    if g.target is operator.getitem and g not in inside and not w.carries(g):
                        inside.add(g)
    region = [n for n in w.gm.graph.nodes if n in inside]
    for n in region:
        w.check_tokenwise(n, allow_sdpa)
    # consumers of region tensors outside it must receive full-length tensors
    exits, gathers = [], []
    for n in region:
        outside = [u for u in n.users if u not in inside and u.target not in CHECKS]
        if outside and w.carries(n):
            if n not in ends:
                raise ScopeRefused(
                    f"{where(n)} is also used outside the {scope} region, by {where(outside[0])}: only the region's "
                    f"end can be handed back at full length{w.hint}")
            exits.append(n.name)
        elif outside and n.target in CUTS:
            continue  # a text part cut out of a joint sequence: full length, leaves unchanged
        elif outside and _lattice_atoms(w.labels.get(n), w.seg):
            raise ScopeRefused(f"{where(n)} leaves the {scope} region (used by {where(outside[0])}) with the image "
                               f"tokens split across dimensions{w.hint}")
    for n in region:  # tensors from outside that run along the token dimension
        for a in n.all_input_nodes:
            if a in inside or a is entry:
                continue
            if w.carries(a) or _along_tokens(w, n, a):
                gathers.append((a.name, n.name))
    if not exits:
        raise ScopeRefused(f"the {scope} region of {w.site.module} hands no image-token tensor back{w.hint}")
    return RegionPlan(scope, entry.name, [n.name for n in region], exits, residual, gathers)


def _along_tokens(w: _Walker, consumer: fx.Node, a: fx.Node) -> bool:
    """An unlabelled operand broadcast against a token dim of full length (a RoPE table, a mask)."""
    if consumer.target not in ELEMENTWISE and not (isinstance(consumer.target, torch._ops.OpOverload)
                                                    and torch.Tag.pointwise in consumer.target.tags):
        return False  # only elementwise broadcasting aligns an operand's dims with the token dim
    lab = w.labels.get(consumer)
    d = token_dim(lab, w.seg)
    av, cv = a.meta.get("val"), consumer.meta.get("val")
    if d is None or not isinstance(av, torch.Tensor) or not isinstance(cv, torch.Tensor):
        return False
    j = d - (cv.dim() - av.dim())
    return 0 <= j < av.dim() and av.shape[j] == cv.shape[d] and av.shape[j] > 1


def _listed(nodes) -> str:
    nodes = sorted(nodes, key=lambda n: n.name)
    more = f" and {len(nodes) - 3} more" if len(nodes) > 3 else ""
    return "; ".join(where(n) for n in nodes[:3]) + more


def _count(nodes) -> str:
    return f"{len(nodes)} image-token tensor" + ("" if len(nodes) == 1 else "s")


def _output_projections(w: _Walker, sdpa: fx.Node) -> set:
    """Forward from the sdpa over image-carrying nodes up to the first projection on each path (or the node
    before a join with a parallel branch)."""
    after = {sdpa} | _users_closure([sdpa])
    ends, seen, stack = set(), set(), [sdpa]
    while stack:
        n = stack.pop()
        for u in n.users:
            if u in seen or not w.carries(u):
                continue
            data = u.all_input_nodes[:1] if u.target == aten.type_as.default else u.all_input_nodes  # dtype only
            if any(a is not n and w.carries(a) and a not in after for a in data):
                ends.add(n)  # joins a parallel branch (Flux single-stream MLP): end before the join
                continue
            seen.add(u)
            (ends.add if u.target in PROJECTIONS else stack.append)(u)
    if not ends:
        raise ScopeRefused(f"no output projection (a linear layer) after {where(sdpa)}{w.hint}")
    return ends


def plan_attention_proj(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    w = _Walker(gm, labels, site, "attention+proj")
    sdpa = site.node
    entries = set()
    for arg in sdpa.args[:3]:
        if w.carries(arg):
            entries |= _projection_inputs(w, arg)
    if len(entries) > 1:
        raise ScopeRefused(f"the q/k/v projections of {site.module} read {len(entries)} different image-token tensors "
                           f"({_listed(entries)}); attention+proj needs the one tensor they all project (e.g. the "
                           f"normalised hidden states){w.hint}")
    if not entries:
        raise ScopeRefused(f"no q/k/v projection (a linear layer on the image tokens) found before {where(sdpa)}"
                           f"{w.hint}")
    entry = entries.pop()
    ends = _output_projections(w, sdpa)
    return _plan_between(w, entry, ends, "attention+proj", {sdpa})


def _cross_attentions(w: _Walker, in_block: set) -> list[fx.Node]:
    """The block's cross-attentions whose queries are the image tokens (keys / values carry none)."""
    return [n for n in w.gm.graph.nodes if n in in_block and n.target == SDPA and n is not w.site.node
            and w.carries(n.args[0]) and not w.carries(n.args[1]) and not w.carries(n.args[2])]


def plan_attention_cross(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    """attention+proj, plus every cross-attention of the site's block on the same kept tokens: its q projection
    and output projection run on k tokens, its attention over the (whole) text for k queries."""
    plan = plan_attention_proj(gm, labels, site)
    w = _Walker(gm, labels, site, "attention+cross")
    if site.block is None:
        raise ScopeRefused(f"{site.module or 'the site'} is not inside a repeated block (no `<name>.<index>` module "
                           f"such as blocks.3 around it), so no cross-attention belongs to it{w.hint}")
    group, idx = block_of(site.module)
    crosses = _cross_attentions(w, block_nodes(gm, f"{group}.{idx}"))
    if not crosses:
        raise ScopeRefused(f"block {group}.{idx} has no cross-attention whose queries are the image tokens (self / "
                           f"joint attention only){w.hint}")
    extra = []
    for c in crosses:
        mask = c.args[3] if len(c.args) > 3 else c.kwargs.get("attn_mask")
        mval = mask.meta.get("val") if isinstance(mask, fx.Node) else None
        if isinstance(mval, torch.Tensor) and mval.dim() >= 2 and mval.shape[-2] > 1:
            raise w.refuse(c, "has an attention mask with a row per image-token query (it would have to be cut to "
                              "the kept tokens)")
        entries = _projection_inputs(w, c.args[0])
        if len(entries) != 1:
            raise w.refuse(c, f"reads its queries from {_count(entries)} through its q projection; attention+cross "
                              "needs one")
        extra.append(_plan_between(w, entries.pop(), _output_projections(w, c), "attention+cross", {c}))
    return replace(plan, scope="attention+cross", extra=extra)


def block_nodes(gm: fx.GraphModule, prefix: str) -> set:
    """The nodes of block `prefix` by dataflow: those its modules recorded, plus every node on a path between
    two of them — a rotary module owned by the top-level model and called inside the block, a residual add
    written in a parent's loop between two sub-modules of the block."""
    recorded = {n for n in gm.graph.nodes if n.op == "call_function" and n.target not in CHECKS and
                (module_of(n) == prefix or module_of(n).startswith(prefix + "."))}
    if not recorded:
        return recorded
    between = _users_closure(list(recorded)) & _ancestors(list(recorded))
    return recorded | {n for n in between if n.op == "call_function" and n.target not in CHECKS}


def _block_ends(w: _Walker, in_block: set) -> set:
    return {n for n in in_block if w.carries(n) and any(u not in in_block and u.target not in CHECKS for u in n.users)}


def plan_block(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    w = _Walker(gm, labels, site, "block")
    group, idx = block_of(site.module)
    prefix = f"{group}.{idx}"
    in_block = block_nodes(gm, prefix)
    entries = {a for n in in_block for a in n.all_input_nodes if a not in in_block and w.carries(a)}
    ends = _block_ends(w, in_block)
    while len(entries) == 1 and len(ends) > 1:  # residual adds written in the parent's loop (a ModuleList layer
        joins = {u for e in ends for u in e.users if u not in in_block and u.target not in CHECKS}  # with no forward)
        j = joins.pop() if len(joins) == 1 else None
        entry = next(iter(entries))
        if j is None or w.labels.get(j) != w.labels.get(entry) or _val_shape(j) != _val_shape(entry):
            break  # the outputs meet in one op shaped like the block's input: the block ends there
        in_block = in_block | {j}
        ends = _block_ends(w, in_block)
    if len(entries) != 1 or len(ends) != 1:
        raise ScopeRefused(
            f"block {prefix} reads {_count(entries)} from outside ({_listed(entries) or 'none'}) and "
            f"hands {_count(ends)} back ({_listed(ends) or 'none'}); block scope needs one image input and one image "
            f"output, as in `x = block(x, ...)`{w.hint}")
    # only the block's own attentions: one that lies between its modules but another module recorded (a
    # different block's, a shared block called twice) still refuses the region
    allow = {n for n in in_block if n.target == SDPA and (module_of(n) == prefix or module_of(n).startswith(prefix + "."))}
    allow.add(site.node)
    return _plan_between(w, entries.pop(), ends, "block", allow, residual=True)


# ops that commute with a convex combination of tokens (weights summing to 1, a k/v-only method's pooling):
# linear maps over the channels, constant shifts, layout ops — pooling before them equals pooling after
AFFINE = {aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
          aten.transpose.int, aten.t.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
          aten.squeeze.default, aten.expand.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
          aten.detach.default, aten._to_copy.default, aten.to.dtype, aten.type_as.default, aten.linear.default,
          aten.addmm.default, aten.mm.default, aten.matmul.default, aten.bmm.default, aten.add.Tensor,
          aten.sub.Tensor, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.cat.default,
          aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default, aten.select.int, aten.unbind.int,
          operator.getitem}
SCALING = {aten.mul.Tensor, aten.div.Tensor}   # affine only when one operand (not a divisor) carries tokens
KV_ONLY = "attention+proj (k/v)"   # site.scopes key of the k/v-only plan


def plan_kv_projections(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    """For methods that reduce keys / values only (ToDo): the k and v projections run on the pooled input
    tokens instead of pooling their outputs — ToDo's own form (it pools the hidden states the keys and values
    are projected from). Equal to pooling after them because every op on the path is affine (AFFINE) and the
    pooling weights sum to 1; the q projection and the output stay full length, nothing is reconstructed."""
    w = _Walker(gm, labels, site, "attention+proj")
    sdpa = site.node
    q, k, v = sdpa.args[:3]
    entries = set()
    for arg in (k, v):
        if w.carries(arg):
            entries |= _projection_inputs(w, arg)
    if len(entries) != 1:
        raise ScopeRefused(f"the k/v projections of {site.module} read {_count(entries)} ({_listed(entries) or 'none'});"
                           f" pooling before them needs the one tensor they both project{w.hint}")
    entry = entries.pop()
    down, kv_up, q_up = _users_closure([entry]), _ancestors([k, v]) | {k, v}, _ancestors([q]) | {q}
    region = [n for n in gm.graph.nodes if n in down and n in kv_up and n.target not in CHECKS]
    inside = set(region)
    mask = sdpa.args[3] if len(sdpa.args) > 3 else sdpa.kwargs.get("attn_mask")
    if w.carries(mask):
        raise w.refuse(sdpa, "has an attention mask over the image tokens")
    for n in region:
        if n in q_up:
            raise w.refuse(n, "feeds the queries as well as the keys / values (a fused qkv projection): pooling "
                              "its input would pool the queries")
        w.check_tokenwise(n, set())
        if n.target == aten.div.Tensor and w.carries(n.args[1]):   # c / x is not affine in x
            raise w.refuse(n, "divides by the keys / values (not affine in them): pooling before it would change "
                              "what is pooled")
        if n.target not in AFFINE or (n.target in SCALING and sum(map(w.carries, n.all_input_nodes)) > 1):
            raise w.refuse(n, "is not affine (a norm or activation on the keys / values): pooling before it would "
                              "change what is pooled")
        for u in n.users:
            if u not in inside and u is not sdpa and u.target not in CHECKS:
                raise w.refuse(n, f"is also used outside the k/v projections, by {where(u)}")
        for a in n.all_input_nodes:
            if a not in inside and a is not entry and (w.carries(a) or _along_tokens(w, n, a)):
                raise w.refuse(n, f"reads {where(a)}, which runs along the image tokens (a positional term): it "
                                  "would have to be pooled too")
    return RegionPlan("attention+proj", entry.name, [n.name for n in region], [], kv_only=True)


PLANNERS = {"attention+proj": plan_attention_proj, "attention+cross": plan_attention_cross, "block": plan_block}


def plan_scopes(gm: fx.GraphModule, labels: dict, sites: list[Site]) -> None:
    """Record, per site, a RegionPlan or the reason for every wider scope (site.scopes)."""
    for site in sites:
        plans = {}
        if site.grid is None or site.image is None:
            site.scopes = plans
            continue
        for scope, planner in PLANNERS.items():
            if site.run_time_text:
                plans[scope] = (f"{site.module or 'the site'} attends to text of run-time length (read per sample): "
                                f"`{scope}` would cut its sequence at a run-time position; the site uses scope `attention`")
                continue
            if scope == "block" and site.block is None:
                plans[scope] = (f"{site.module or 'the site'} is not inside a repeated block (no `<name>.<index>` "
                                f"module such as blocks.3 around it){_Walker.hint_for('block')}")
                continue
            try:
                plans[scope] = planner(gm, labels, site)
            except ScopeRefused as e:
                plans[scope] = str(e)
        if site.run_time_text:
            plans[KV_ONLY] = (f"{site.module or 'the site'} attends to text of run-time length (read per sample)"
                              f"{_Walker.hint_for('attention+proj')}")
        else:
            try:
                plans[KV_ONLY] = plan_kv_projections(gm, labels, site)
            except ScopeRefused as e:
                plans[KV_ONLY] = str(e)
        proj, block = plans.get("attention+proj"), plans.get("block")
        if isinstance(proj, str) and isinstance(block, str):  # the next narrower scope is refused too
            plans["block"] = block.replace(_Walker.hint_for("block"), _Walker.hint_for("attention+proj"))
        site.scopes = plans
