"""Pass 4 — rewrite: replace each selected attention site by a region
(reduce -> one sdpa on the kept tokens -> reconstruct), for one variant (one config per site).

The region is one call_function node of `regions.attention_region` whose selection tensors are
get_attr constants (static methods) — still a single sdpa inside, so fused attention survives lowering.
The rewritten GraphModule shares parameters with the captured one (no copy per variant).
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

from ..methods import get_method
from ..regions import attention_region, embed_in_sequence
from .site import Site


def _sdpa_args(node: fx.Node) -> dict:
    names = ["query", "key", "value", "attn_mask", "dropout_p", "is_causal"]
    out = dict(zip(names, node.args))
    out.update(node.kwargs)
    return out


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    graph._codegen = copy.deepcopy(gm.graph._codegen)
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    new = fx.GraphModule(gm, graph)
    new.meta.update(gm.meta)
    return new


def rewrite(gm: fx.GraphModule, sites: list[Site], configs: tuple) -> fx.GraphModule:
    """A new GraphModule with a region in place of every site whose config is not None."""
    new = _copy_graph_module(gm)
    nodes = {n.name: n for n in new.graph.nodes}
    fake_mode = detect_fake_mode([n.meta.get("val") for n in new.graph.nodes if n.op == "placeholder"])
    regions = 0
    for site, cfg in zip(sites, configs):
        if cfg is None:
            continue
        node = nodes[site.name]
        method = get_method(cfg.method)(**cfg.param_dict)
        if not method.static:
            raise NotImplementedError(f"method {cfg.method!r} selects in-graph; not available in this build")
        start, seg = site.image
        sel, _ = method.select(None, seg.grid, cfg.k)
        full = embed_in_sequence(sel, start, site.q_len)
        a = _sdpa_args(node)
        consts = []
        for field, t in zip(("kept", "src", "w"), full):
            t = t.to(device=a["query"].meta["val"].device)
            if field == "w":
                t = t.to(a["query"].meta["val"].dtype)
            attr = f"_ditreduce_{site.name}_{field}"
            new.register_buffer(attr, t, persistent=False)
            with new.graph.inserting_before(node):
                ga = new.graph.get_attr(attr)
            ga.meta["val"] = fake_mode.from_tensor(t) if fake_mode is not None else t
            consts.append(ga)
        kwargs = {"reduce_q": method.reduces_q, "dropout_p": float(a.get("dropout_p", 0.0) or 0.0),
                  "is_causal": bool(a.get("is_causal", False)), "scale": a.get("scale"),
                  "enable_gqa": bool(a.get("enable_gqa", False))}
        with new.graph.inserting_before(node):
            region = new.graph.call_function(
                attention_region, (a["query"], a["key"], a["value"], a.get("attn_mask"), *consts), kwargs)
        region.meta.update(node.meta)  # val (same shape/dtype as the sdpa output), nn_module_stack, stack_trace
        region.meta["ditreduce_region"] = {"site": site.name, "module": site.module, "method": cfg.method,
                                           "k": cfg.k, "n": cfg.n, "ratio": cfg.ratio,
                                           "kept_seq": int(full.kept.shape[1]), "seq": site.q_len}
        node.replace_all_uses_with(region)
        new.graph.erase_node(node)
        regions += 1
    new.graph.lint()
    new.recompile()
    new.meta["ditreduce_regions"] = regions
    return new


def region_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is attention_region]
