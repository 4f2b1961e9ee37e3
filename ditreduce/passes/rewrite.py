"""Pass 4 — rewrite: turn each selected site into a region for one variant (one config per site).

- scope `attention`: the sdpa node becomes one `regions.attention_region` call (reduce → one sdpa on
  the kept tokens → reconstruct). Static methods pass their selection as get_attr constants; in-graph
  methods get a `select_tokens` node on the value tokens of the image segment.
- scopes `attention+proj` / `block`: the site's RegionPlan (passes/scope.py) is applied: the entry is
  reduced, tensors entering along the token dim are gathered, the token sizes of views / slices /
  splits inside are rewritten from the axis labels, and the exits are reconstructed. A site whose plan
  was refused keeps the `attention` scope (report() says why).

The rewritten GraphModule shares parameters with the captured one (no copy per variant); every node's
meta["val"] is re-propagated with fake tensors.
"""
from __future__ import annotations

import copy
import dataclasses
import operator

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .. import regions
from ..flops import fake_inputs, fake_mode
from ..methods import get_method
from ..methods.base import SiteContext, StateSpec
from ..methods.graph import embed, image_tokens, observe_tokens, select_tokens
from ..methods.lattice import cfg_pairs
from . import axes
from .axes import axis_labels
from .capture import quiet_export_warnings
from .scope import CHECKS, KV_ONLY, RegionPlan, fallback_chain, image_seg, token_dim
from .site import Site

aten = torch.ops.aten


def _sdpa_args(node: fx.Node) -> dict:
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal"]
    out = dict(zip(names, node.args))
    out.update(node.kwargs)
    return out


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    with quiet_export_warnings():  # the codegen's pytree specs: torch's own LeafSpec deprecation on copy
        graph._codegen = copy.deepcopy(gm.graph._codegen)
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = fx.GraphModule(gm, graph)
    new.meta.update(gm.meta)
    return new


def _device(node: fx.Node) -> torch.device:
    """The device of a node's (first) tensor value."""
    val = node.meta.get("val")
    val = next((v for v in val if isinstance(v, torch.Tensor)), None) if isinstance(val, (tuple, list)) else val
    return val.device if isinstance(val, torch.Tensor) else torch.device("cpu")


class _Builder:
    """Inserts the selection of one site into a graph: constants or an in-graph select node, and the
    embeddings of the image selection into the sequence layouts that need it."""

    def __init__(self, gm: fx.GraphModule, site: Site, cfg, before: fx.Node):
        self.gm, self.site, self.cfg, self.before = gm, site, cfg, before
        self.method = get_method(cfg.method)(**cfg.param_dict)
        self._embedded: dict = {}
        self.image_sel: fx.Node | None = None
        self.state_in: dict[str, fx.Node] = {}    # stateful methods: placeholders `state.<site>.<name>`
        self.state_out: dict[str, fx.Node] = {}   # and the nodes that become `state_out.<site>.<name>`
        self.ctx: SiteContext | None = None
        self.spec = StateSpec()                   # what the method carries: inputs, selected and observed state
        self.params = cfg.params                  # the parameters the in-graph calls get (cfg: shared resolved)

    def call(self, fn, args, kwargs=None, before=None):
        with self.gm.graph.inserting_before(before or self.before):
            return self.gm.graph.call_function(fn, tuple(args), kwargs or {})

    def state_input(self, name: str, shape: tuple, dtype) -> fx.Node:
        """A new graph input (after the existing ones) for one state tensor of this site."""
        graph = self.gm.graph
        last = [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(last):
            node = graph.placeholder(f"state_{self.site.name}_{name}")
        with FakeTensorMode(allow_non_fake_inputs=True):
            node.meta["val"] = torch.empty(shape, dtype=dtype, device=self.ctx.device)
        return node

    def context(self, y_like: tuple | None) -> SiteContext:
        """The site's SiteContext; y_like: (node, token dim) of the site's output, whose batch, channels, dtype
        and device a method's state takes."""
        ctx = SiteContext(n=self.site.image[1].length, k=self.cfg.k, lattice=tuple(self.site.grid),
                          forced=regions.regions_forced(), device=_device(self.before))
        if y_like is None:
            return ctx
        val, dim = y_like[0].meta["val"], y_like[1] % y_like[0].meta["val"].dim()
        return dataclasses.replace(ctx, batch=val.shape[0], channels=val.numel() // (val.shape[0] * val.shape[dim]),
                                   dtype=val.dtype, device=val.device)

    def select(self, tokens: fx.Node | None, y_like: tuple | None = None) -> fx.Node:
        """The image selection (a Selection-valued node): the method's selection function, folded into
        constants for a static method, else one `select_tokens` call on `tokens` (None for a method that reads
        none) fed its state inputs (new placeholders)."""
        self.ctx = ctx = self.context(y_like)
        if self.method.static:
            sel, _ = self.method.selection(None, {}, ctx)
            parts = []
            for field, t in zip(regions.Selection._fields, sel):
                if t is None:
                    parts.append(None)
                    continue
                attr = f"_ditreduce_{self.site.name}_{field}"  # on the graph's device (tables are built on CPU)
                self.gm.register_buffer(attr, t.to(_device(self.before), copy=True), persistent=False)
                with self.gm.graph.inserting_before(self.before):
                    parts.append(self.gm.graph.get_attr(attr))
            self.image_sel = self.call(regions.Selection, parts)
            return self.image_sel
        self.spec = spec = self.method.state_spec(ctx)
        self.state_in = {name: self.state_input(name, *shape) for name, shape in spec.inputs.items()}
        pairs, cfg = self.cfg_pairs(self.method.params.get("cfg"))
        self.params = self.cfg.params if cfg == self.method.params.get("cfg") else tuple(
            sorted({**dict(self.cfg.params), "cfg": cfg}.items()))
        node = self.call(select_tokens, [tokens, self.state_in, pairs],
                         {"method": self.cfg.method, "params": self.params, **ctx.as_kwargs()})
        self.image_sel = self.call(operator.getitem, [node, 0])
        if spec.selected:
            new = self.call(operator.getitem, [node, 1])
            self.state_out.update({name: self.call(operator.getitem, [new, name]) for name in spec.selected})
        return self.image_sel

    def cfg_pairs(self, cfg: str | None) -> tuple[fx.Node | None, str | None]:
        """`cfg: shared` shares a selection only within CFG pairs (equal latents): (the graph's cfg_pairs
        node, "shared"). Where the latent input is unknown: (None, "per_sample"), noted on the site."""
        if cfg != "shared":
            return None, cfg
        node = self.gm.meta.get(_PAIRS)
        if node is None:
            note = ("cfg: shared runs per sample here: the latent input is unknown, so a CFG pair cannot be told "
                    "from two independent samples")
            notes = self.site.notes
            if note not in notes:
                notes.append(note)
            return None, "per_sample"
        return node, "shared"

    def finish(self, out: fx.Node, dim: int, start: int) -> None:
        """Methods that observe their site's output: the full-length output `out` (image tokens at
        [start, start + n) of dim) goes to one `observe_tokens` call, whose results are state outputs."""
        if not self.spec.observed:
            return
        y = self.call(image_tokens, [out, dim, start, self.site.image[1].length], before=out.next)
        obs = self.call(observe_tokens, [y, self.state_in, self.image_sel],
                        {"method": self.cfg.method, "params": self.params, **self.ctx.as_kwargs()}, before=y.next)
        after = obs
        for name in self.spec.observed:
            after = self.state_out[name] = self.call(operator.getitem, [obs, name], before=after.next)

    def embedded(self, start: int, seq_len: int, in_layout: bool = False) -> fx.Node:
        """The image selection lifted to a sequence of seq_len tokens with the image at `start`; in_layout:
        kept in the sequence's own order (regions wider than attention; reduce with merge_at=start)."""
        key = (start, seq_len, in_layout)
        if key not in self._embedded:
            n = self.site.image[1].length
            self._embedded[key] = self.image_sel if (start, seq_len) == (0, n) else self.call(
                embed, [self.image_sel], {"start": start, "seq_len": seq_len, "merges_first": not in_layout})
        return self._embedded[key]

    def in_layout(self, start: int, seq_len: int) -> fx.Node:
        return self.embedded(start, seq_len, in_layout=True)


_PAIRS = "ditreduce_cfg_pairs"  # gm.meta key of the node comparing the latent's two halves, during rewrite


def _insert_cfg_pairs(gm: fx.GraphModule) -> None:
    """One `cfg_pairs(latent)` node after the inputs: the graph input seeded as the image latent (the
    placeholder whose axis labels carry the lattice). None found: no node, and shared selection runs per sample."""
    lattice_axes = {"y", "x", "f"}
    places = [n for n in gm.graph.nodes if n.op == "placeholder"]
    labels = axis_labels(gm)
    latents = [n for n in places if any(a[0] in lattice_axes for dl in labels.get(n, ())
                                        for seg in dl for a in seg)]
    if len(latents) != 1:
        return
    with gm.graph.inserting_after(places[-1]):
        gm.meta[_PAIRS] = gm.graph.call_function(cfg_pairs, (latents[0],))


def _rewrite_attention(new: fx.GraphModule, site: Site, cfg) -> tuple[fx.Node, _Builder]:
    node = {n.name: n for n in new.graph.nodes}[site.name]
    a = _sdpa_args(node)
    b = _Builder(new, site, cfg, node)
    start, seg = site.image
    seq_len = site.q_len
    if site.run_time_text:
        start, seq_len = _run_time_span(b, site, a["query"])
    tokens = None if b.method.static or not b.method.reads_tokens else b.call(image_tokens, [a["value"], -2, start,
                                                                                            seg.length])
    b.select(tokens, (node, -2))
    sel = b.embedded(start, seq_len)
    parts = [b.call(operator.getitem, [sel, i]) for i in range(len(regions.Selection._fields))]
    kwargs = {"reduce_q": b.method.reduces_q, "dropout_p": float(a.get("dropout_p", 0.0) or 0.0),
              "is_causal": bool(a.get("is_causal", False)), "scale": a.get("scale"),
              "enable_gqa": bool(a.get("enable_gqa", False)), "prop_attn": cfg.prop_attn}
    region = b.call(regions.attention_region, [a["query"], a["key"], a["value"], a.get("attn_mask"), *parts], kwargs)
    region.meta.update(node.meta)
    node.replace_all_uses_with(region)
    new.graph.erase_node(node)
    b.finish(region, -2, start)
    return region, b


def _run_time_span(b: _Builder, site: Site, query: fx.Node) -> tuple:
    """(image start, sequence length) of a site whose text length is only known at run time: graph nodes
    that read the query's length (the image start too when the run-time text comes before the image)."""
    before, after, side = site.layout.image_span()
    seq_len = b.call(aten.sym_size.int, [query, query.meta["val"].dim() - 2])
    if side == "after":
        return before, seq_len
    return b.call(operator.sub, [seq_len, site.image[1].length + after]), seq_len


def _seg_start(dl, seg) -> int:
    pos = 0
    for s in dl:
        if s == seg:
            return pos
        pos += axes.seg_size(s)
    raise ValueError("image segment not in this dim")


def _new_size(dl, seg, k: int) -> int:
    return sum(k if s == seg else axes.seg_size(s) for s in dl)


def _map_pos(dl, seg, k: int, p: int) -> int:
    """A position along an original dim, mapped to the reduced dim (positions after the image shift)."""
    start, n = _seg_start(dl, seg), axes.seg_size(seg)
    if p <= start:
        return p
    if p >= start + n:
        return p - n + k
    raise ValueError("a cut inside the image segment")


def _fix_sizes(node: fx.Node, labels: dict, seg, k: int) -> None:
    """Rewrite the token-dim sizes a node states explicitly (views, expands, slices, splits)."""
    t = node.target
    if t in (aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default):
        lab = labels[node]
        shape = list(node.args[1])
        for i, dl in enumerate(lab):
            if any(s == seg for s in dl) and shape[i] != -1:
                shape[i] = _new_size(dl, seg, k)
        node.args = (node.args[0], shape, *node.args[2:])
        return
    x = node.args[0] if node.args else None
    xl = labels.get(x) if isinstance(x, fx.Node) else None
    d = token_dim(xl, seg)
    if d is None:
        return
    if t in (aten.slice.Tensor, aten.slice_scatter.default):
        o = 1 if t == aten.slice_scatter.default else 0  # slice_scatter(x, src, dim, start, end)
        args = list(node.args)
        dim = args[1 + o] % len(xl) if len(args) > 1 + o else 0
        if dim != d:
            return
        size = axes.dim_size(xl[d])
        lo = args[2 + o] if len(args) > 2 + o and args[2 + o] is not None else 0
        hi = args[3 + o] if len(args) > 3 + o and args[3 + o] is not None else size
        lo, hi = (lo + size if lo < 0 else lo), min(size, hi + size if hi < 0 else hi)
        args = args + [None] * (4 + o - len(args))
        args[1 + o], args[2 + o], args[3 + o] = dim, _map_pos(xl[d], seg, k, lo), _map_pos(xl[d], seg, k, hi)
        node.args = tuple(args)
    elif t in (aten.split_with_sizes.default, aten.split.Tensor):
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(xl)
        if dim != d:
            return
        size = axes.dim_size(xl[d])
        sizes = list(node.args[1]) if t == aten.split_with_sizes.default else [
            min(node.args[1], size - i) for i in range(0, size, node.args[1])]
        bounds, pos = [], 0
        for s in sizes:
            bounds.append((pos, pos + s))
            pos += s
        new_sizes = [_map_pos(xl[d], seg, k, hi) - _map_pos(xl[d], seg, k, lo) for lo, hi in bounds]
        node.target = aten.split_with_sizes.default
        node.args = (x, new_sizes, dim)
        node.kwargs = {}


def _apply_plan(new: fx.GraphModule, site: Site, cfg, plan: RegionPlan, rebuilt: dict,
                shared: _Builder | None = None) -> tuple[fx.Node, _Builder]:
    """Apply one plan; `rebuilt` maps an earlier region's exit to the node that now carries its full
    tensor (block after block: a block's input is the previous block's reconstructed output). `shared`: the
    builder of the region whose selection this one reuses (plan.extra: the block's cross-attention queries);
    then nothing is selected and no state is kept here."""
    nodes = {n.name: n for n in new.graph.nodes}
    lab = axis_labels(new)
    for old, full in rebuilt.items():
        lab[full] = lab[nodes[old]]
        nodes[old] = full
    seg, n = image_seg(site), site.image[1].length
    entry = nodes[plan.entry]
    inner = [nodes[x] for x in plan.inner]
    inside = set(inner)
    first = inner[0]
    b = shared or _Builder(new, site, cfg, first)
    b.before = first
    d_e = token_dim(lab[entry], seg)
    start_e, len_e = _seg_start(lab[entry][d_e], seg), axes.dim_size(lab[entry][d_e])
    # one dense copy at the entry when it is strided (e.g. a transposed patch embedding): every gather,
    # score and residual below reads it, and each would otherwise copy it again (no-op when contiguous)
    dense_entry = entry
    identity = cfg.k == cfg.n and not regions.regions_forced()
    if not identity:
        entry = b.call(torch.Tensor.contiguous, [entry])
    if shared is None:
        tokens = None if b.method.static or not b.method.reads_tokens else b.call(image_tokens, [entry, d_e, start_e, n])
        x0 = nodes[plan.exits[0]] if plan.exits else None   # kv_only: nothing leaves reduced (static methods)
        b.select(tokens, None if x0 is None else (x0, token_dim(lab[x0], seg)))
    red_entry = b.call(regions.reduce_tokens, [entry, b.in_layout(start_e, len_e), d_e, start_e])
    for u in list(dense_entry.users):
        if u in inside:
            u.replace_input_with(dense_entry, red_entry)
    for a_name, c_name in plan.gathers:
        a, c = nodes[a_name], nodes[c_name]
        d_a = token_dim(lab.get(a), seg)
        if d_a is not None:  # image features from outside: reduced like the entry
            start_a = _seg_start(lab[a][d_a], seg)
            g = b.call(regions.reduce_tokens, [a, b.in_layout(start_a, axes.dim_size(lab[a][d_a])), d_a, start_a], before=c)
        else:  # positional (RoPE tables): the kept tokens' rows
            d_c = token_dim(lab[c], seg)
            av, cv = a.meta["val"], c.meta["val"]
            j = d_c - (cv.dim() - av.dim())
            sel = b.in_layout(_seg_start(lab[c][d_c], seg), axes.dim_size(lab[c][d_c]))
            per_sample = c.target in _BROADCASTING and av.dim() == cv.dim() and cv.shape[0] > 1
            g = b.call(_take_kept, [a, sel, j, per_sample], before=c)
        c.replace_input_with(a, g)
    for node in inner:
        _fix_sizes(node, lab, seg, cfg.k)
    for x_name in plan.exits:
        x = nodes[x_name]
        outside = [u for u in x.users if u not in inside]
        d_x = token_dim(lab[x], seg)
        sel = b.in_layout(_seg_start(lab[x][d_x], seg), axes.dim_size(lab[x][d_x]))
        after = x.next
        if identity:  # nothing to reconstruct (exact)
            rec = x
        elif plan.residual:
            delta = b.call(operator.sub, [x, red_entry], before=after)
            rec = b.call(operator.add, [entry, b.call(regions.reconstruct_tokens, [delta, sel, d_x], before=after)],
                         before=after)
        else:
            rec = b.call(regions.reconstruct_tokens, [x, sel, d_x], before=after)
        for u in outside:
            u.replace_input_with(x, rec)
        rebuilt[x_name] = rec
        if x_name == plan.exits[0] and shared is None:
            b.finish(rec, d_x, _seg_start(lab[x][d_x], seg))
    sdpa = nodes.get(site.name)
    if cfg.prop_attn and not identity and (sdpa in inside or plan.kv_only):
        _add_size_bias(b, sdpa, b.in_layout(site.image[0], site.kv_len), reduce_q=not plan.kv_only,
                       merge_at=site.image[0])
    return red_entry, b


def _add_size_bias(b: _Builder, sdpa: fx.Node, sel: fx.Node, reduce_q: bool = True, merge_at: int = 0) -> None:
    """Proportional attention inside a wider region: the site's sdpa (on the kept tokens, or on the pooled
    keys / values of a kv_only plan) gets regions.with_size_bias as its attn_mask."""
    a = _sdpa_args(sdpa)
    mask = b.call(regions.with_size_bias, [a.get("attn_mask"), sel, a["query"], reduce_q, merge_at], before=sdpa)
    if len(sdpa.args) > 3:
        sdpa.args = (*sdpa.args[:3], mask, *sdpa.args[4:])
    else:
        sdpa.kwargs = {**sdpa.kwargs, "attn_mask": mask}


_BROADCASTING = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.div.Tensor}


def _take_kept(t: torch.Tensor, sel: regions.Selection, dim: int, per_sample: bool = False) -> torch.Tensor:
    """Rows of a positional tensor (RoPE table) at the kept tokens; a broadcast batch of 1 stays 1, except
    under a per-sample selection feeding an op that broadcasts over the batch (`per_sample`): the table is
    expanded so that every sample reads the rows of its own kept tokens, not sample 0's."""
    if per_sample and dim != 0 and t.shape[0] == 1 and sel.kept.shape[0] > 1:
        return regions.take_tokens(t.expand(sel.kept.shape[0], *t.shape[1:]), sel.kept, dim)
    kept = sel.kept if t.shape[0] == sel.kept.shape[0] or dim == 0 else sel.kept[:1]
    if kept.shape[0] > 1 and t.shape[0] == 1:
        t = t.expand(kept.shape[0], *t.shape[1:])
    return regions.take_tokens(t, kept, dim)


def _thread_state(gm: fx.GraphModule, state: list) -> None:
    """Stateful sites: the call takes `state={site: {name: tensor}}` and returns (output, {"state": {site:
    {name: tensor}}}); gm.meta["ditreduce_state"] = {"inputs"/"outputs": {site: {name: (shape, dtype)}}}."""
    from torch.utils._pytree import TreeSpec, tree_structure

    ins = {site: dict(b.state_in) for site, b in state if b.state_in}
    outs = {site: {name: b.state_out[name] for name in b.spec.outputs} for site, b in state}
    codegen = gm.graph._codegen
    info = codegen.pytree_info
    args_spec, kw_spec = (info.in_spec.child(i) for i in range(2))
    if ins:
        in_spec = TreeSpec(tuple, None, [args_spec, TreeSpec(dict, list(kw_spec.context) + ["state"],
                                                             [kw_spec.child(i) for i in range(kw_spec.num_children)] + [tree_structure(ins)])])
        orig_args = list(info.orig_args) + ["state"]
    else:
        in_spec, orig_args = info.in_spec, list(info.orig_args)
    out_spec = TreeSpec(tuple, None, [info.out_spec, tree_structure({"state": outs})])
    codegen.pytree_info = info._replace(orig_args=orig_args, in_spec=in_spec, out_spec=out_spec)
    # placeholders must follow the flattening order of the state dict
    order = [n for site in ins.values() for n in site.values()]
    last = [n for n in gm.graph.nodes if n.op == "placeholder" and n not in order][-1]
    for node in order:
        last.append(node)
        last = node
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = list(out_node.args[0]) + [n for site in outs.values() for n in site.values()]
    out_node.args = (tuple(flat),)
    gm.meta["ditreduce_state"] = {
        "inputs": {site: {name: (tuple(b.state_in[name].meta["val"].shape), b.state_in[name].meta["val"].dtype)
                          for name in b.state_in} for site, b in state if b.state_in},
        "outputs": {site: dict(b.spec.outputs) for site, b in state}}


def _refresh_meta(gm: fx.GraphModule) -> str | None:
    """Re-run fake-tensor propagation so every node's meta["val"] matches its new shape (the inputs are
    gm's own placeholders: the captured ones and any state inputs). Returns None, or a note saying why the
    shapes could not be re-derived (the variant still runs; FLOPs counts and exports of it may then fail)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():  # shape bookkeeping: invisible to the caller's dispatch modes (FLOP counters)
        mode = fake_mode()
        try:
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fake_inputs(gm, mode))
        except Exception as e:  # noqa: BLE001 — a model with data-dependent ops of its own (GlmImage's
            # boolean-mask indexing) cannot be re-propagated on fresh fake tensors; the variant still runs
            first = str(e).splitlines()[0] if str(e) else ""
            return (f"shapes of a rewritten variant not re-derived on fake tensors ({type(e).__name__}: {first}): "
                    "it runs, but FLOP counts and exports of it may fail")
    return None


def rewrite(gm: fx.GraphModule, sites: list[Site], configs: tuple) -> fx.GraphModule:
    """A new GraphModule with a region in place of every site whose config is not None. The wider scopes
    read the axis labels the pipeline left in node.meta (they travel with the copied nodes)."""
    new = _copy_graph_module(gm)
    for node in list(new.graph.nodes):  # export's metadata asserts would pin the old token counts
        if node.target in CHECKS:
            new.graph.erase_node(node)
    entries, rebuilt, state = set(), {}, []
    _insert_cfg_pairs(new)
    for site, cfg in zip(sites, configs):
        if cfg is None:
            continue
        plan = site_region(site, cfg)
        if isinstance(plan, RegionPlan):
            if plan.entry in entries:  # another site of the same block already reduced this region
                continue
            entries.add(plan.entry)
            (marker, b), scope = _apply_plan(new, site, cfg, plan, rebuilt), plan.scope
            for extra in plan.extra:   # attention+cross: the block's cross-attention queries, same selection
                _apply_plan(new, site, cfg, extra, rebuilt, shared=b)
        else:
            (marker, b), scope = _rewrite_attention(new, site, cfg), "attention"
        if b.spec.inputs or b.spec.outputs:
            state.append((site.name, b))
        seq = None if site.run_time_text else site.q_len   # None: the text length is only known at run time
        kept_seq = None if seq is None else seq - cfg.n + cfg.k
        marker.meta["ditreduce_region"] = {"site": site.name, "module": site.module, "method": cfg.method,
                                           "k": cfg.k, "n": cfg.n, "ratio": cfg.ratio, "seq": seq,
                                           "kept_seq": kept_seq, "scope": scope}
    new.meta.pop(_PAIRS, None)
    if state:
        _thread_state(new, state)
    new.graph.eliminate_dead_code()
    new.graph.lint()
    new.recompile()
    stale = _refresh_meta(new)
    if stale is not None:   # the variant runs; what it could not re-derive is said in report()
        noted = next((s for s, c in zip(sites, configs) if c is not None), None)
        if noted is not None and stale not in noted.notes:
            noted.notes.append(stale)
    return new


def site_region(site: Site, cfg):
    """The RegionPlan a site really gets for its config — the scope asked for, or where the site refuses it
    a narrower one (scope.fallback_chain) — or the reason it keeps `attention` (a str)."""
    if cfg.scope == "attention":
        return "attention"
    plans = site.scopes
    if not get_method(cfg.method).reduces_q:   # its widest region: the k/v projections on the pooled tokens
        return plans.get(KV_ONLY, "scope not planned for this site")
    for scope in fallback_chain(cfg.scope):
        if isinstance(plans.get(scope), RegionPlan):
            return plans[scope]
    return plans.get(cfg.scope, "scope not planned for this site")


def scope_refusal(site: Site, cfg) -> str:
    """Why a site does not get the scope cfg asks for (site_region gave it a narrower one)."""
    plan = site_region(site, cfg)
    if not get_method(cfg.method).reduces_q:
        why = plan if isinstance(plan, str) else "its widest region is the k/v projections on the pooled tokens"
        return f"{cfg.method} reduces keys/values only (the q projection needs every token): {why}"
    return site.scopes.get(cfg.scope, plan)


def region_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    """One node per region: the attention_region call, or a widened region's reducing node."""
    return [n for n in gm.graph.nodes if "ditreduce_region" in n.meta]
