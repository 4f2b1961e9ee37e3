"""Pass 3b — scope: how far a site's region may widen beyond the sdpa, proved on the axis labels.

For `attention+proj` the region starts at the tensor the q/k/v projections read and ends after the
output projection; for `block` it starts at the block's image-token input and ends at its output.
The region is kept only if every op inside is proved token-wise by the labels (it never mixes image
tokens across the token dimension — except the site's own sdpa, and cross-attention whose keys carry
no image tokens), so that running it on a subset of tokens computes exactly those tokens' values.
Otherwise the site falls back to the `attention` scope and the reason is recorded.

A plan is an explicit IR (RegionPlan) of node names; rewrite.py applies it to a copy of the graph.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .site import Site, block_of, module_of

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
}
CHECKS = {aten._assert_tensor_metadata.default}
CUTS = {aten.slice.Tensor, aten.split.Tensor, aten.split_with_sizes.default, operator.getitem}  # export's metadata asserts: dropped from rewritten graphs
REDUCING = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.var.correction, aten.var_mean.correction}
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


class _Walker:
    def __init__(self, gm: fx.GraphModule, labels: dict, site: Site):
        self.gm, self.labels, self.site = gm, labels, site
        self.seg = image_seg(site)

    def carries(self, n) -> bool:
        if not isinstance(n, fx.Node):
            return False
        lab = self.labels.get(n)
        if isinstance(lab, list):  # split / unbind: any part
            return any(token_dim(part, self.seg) is not None for part in lab)
        return token_dim(lab, self.seg) is not None

    def partial(self, n) -> bool:
        """Lattice atoms present but not as one whole segment: tokens split across dims."""
        lab = self.labels.get(n)
        parts = lab if isinstance(lab, list) else [lab]
        return any(_lattice_atoms(p, self.seg) and token_dim(p, self.seg) is None for p in parts)

    def check_tokenwise(self, n: fx.Node, allow_sdpa: set) -> None:
        if n.target not in TOKENWISE and not (isinstance(n.target, torch._ops.OpOverload)
                                              and torch.Tag.pointwise in n.target.tags):
            raise ScopeRefused(f"{n.target} ({n.name}) is not proved token-wise")
        if self.partial(n):
            raise ScopeRefused(f"{n.name} splits the image tokens across dimensions")
        if n.target == SDPA:
            if n not in allow_sdpa and self.carries(n.args[1]):
                raise ScopeRefused(f"another attention over image tokens ({n.name}) inside the region")
            mask = n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask")
            if mask is not None and self.carries(n.args[1]):
                raise ScopeRefused(f"{n.name} has an attention mask over the image tokens")
            return
        ins = [a for a in n.all_input_nodes if self.carries(a)]
        if n.target in REDUCING or n.target in (aten.softmax.int, aten._softmax.default):
            x = n.args[0]
            d = token_dim(self.labels.get(x), self.seg)
            dims = n.args[1] if len(n.args) > 1 else None
            dims = [dims] if isinstance(dims, int) else dims
            if dims is None or (d is not None and any(dd % len(self.labels[x]) == d for dd in dims)):
                raise ScopeRefused(f"{n.target} ({n.name}) reduces over the token dimension")
        if n.target in (aten.matmul.default, aten.bmm.default, aten.mm.default) and len(ins) == 2:
            raise ScopeRefused(f"{n.name}: a product of two token tensors mixes tokens")
        if n.target in (aten.mm.default, aten.matmul.default, aten.bmm.default) and len(n.args) > 1:
            b = n.args[1]
            if self.carries(b) and token_dim(self.labels[b], self.seg) == len(self.labels[b]) - 2:
                raise ScopeRefused(f"{n.name} contracts over the token dimension")


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
                found.add(x)
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
                raise ScopeRefused(f"{n.name} leaves the region before its end (used by {outside[0].name})")
            exits.append(n.name)
        elif outside and n.target in CUTS:
            continue  # a text part cut out of a joint sequence: full length, leaves unchanged
        elif outside and _lattice_atoms(w.labels.get(n), w.seg):
            raise ScopeRefused(f"{n.name} leaves the region with image tokens in an unknown form")
    for n in region:  # tensors from outside that run along the token dimension
        for a in n.all_input_nodes:
            if a in inside or a is entry:
                continue
            if w.carries(a) or _along_tokens(w, n, a):
                gathers.append((a.name, n.name))
    if not exits:
        raise ScopeRefused("no image-token output at the region's end")
    return RegionPlan(scope, entry.name, [n.name for n in region], exits, residual, gathers)


def _along_tokens(w: _Walker, consumer: fx.Node, a: fx.Node) -> bool:
    """An unlabelled operand broadcast against a token dim of full length (a RoPE table, a mask)."""
    if not (isinstance(consumer.target, torch._ops.OpOverload) and torch.Tag.pointwise in consumer.target.tags):
        return False  # only elementwise broadcasting aligns an operand's dims with the token dim
    lab = w.labels.get(consumer)
    d = token_dim(lab, w.seg)
    av, cv = a.meta.get("val"), consumer.meta.get("val")
    if d is None or not isinstance(av, torch.Tensor) or not isinstance(cv, torch.Tensor):
        return False
    j = d - (cv.dim() - av.dim())
    return 0 <= j < av.dim() and av.shape[j] == cv.shape[d] and av.shape[j] > 1


def plan_attention_proj(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    w = _Walker(gm, labels, site)
    sdpa = site.node
    entries = set()
    for arg in sdpa.args[:3]:
        if w.carries(arg):
            entries |= _projection_inputs(w, arg)
    if len(entries) != 1:
        raise ScopeRefused("the q/k/v projections do not read one image tensor" if entries else
                           "no projection found before the attention")
    entry = entries.pop()
    after = {sdpa} | _users_closure([sdpa])
    ends, seen, stack = set(), set(), [sdpa]
    while stack:  # forward over image-carrying nodes up to the first projection on each path
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
        raise ScopeRefused("no output projection after the attention")
    return _plan_between(w, entry, ends, "attention+proj", {sdpa})


def plan_block(gm: fx.GraphModule, labels: dict, site: Site) -> RegionPlan:
    w = _Walker(gm, labels, site)
    group, idx = block_of(site.module)
    prefix = f"{group}.{idx}"
    in_block = {n for n in gm.graph.nodes if n.op == "call_function" and
                (module_of(n) == prefix or module_of(n).startswith(prefix + "."))}
    entries = {a for n in in_block for a in n.all_input_nodes if a not in in_block and w.carries(a)}
    ends = {n for n in in_block if w.carries(n) and any(u not in in_block for u in n.users)}
    if len(entries) != 1 or len(ends) != 1:
        raise ScopeRefused(f"block {prefix} has {len(entries)} image inputs and {len(ends)} image outputs (need 1 and 1)")
    allow = {n for n in in_block if n.target == SDPA}
    return _plan_between(w, entries.pop(), ends, "block", allow, residual=True)


PLANNERS = {"attention+proj": plan_attention_proj, "block": plan_block}


def plan_scopes(gm: fx.GraphModule, labels: dict, sites: list[Site]) -> None:
    """Record, per site, a RegionPlan or the reason for every wider scope (site.extra['scopes'])."""
    for site in sites:
        plans = {}
        if site.grid is None or site.image is None:
            site.extra["scopes"] = plans
            continue
        for scope, planner in PLANNERS.items():
            if scope == "block" and site.block is None:
                plans[scope] = "the site is not inside a repeated block"
                continue
            try:
                plans[scope] = planner(gm, labels, site)
            except ScopeRefused as e:
                plans[scope] = str(e)
        site.extra["scopes"] = plans
