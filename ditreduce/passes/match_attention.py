"""Pass 2 — match attention: find every softmax attention and canonicalise it to one
aten.scaled_dot_product_attention node.

Spellings matched: aten.scaled_dot_product_attention and its flash / efficient / math variants, and
hand-written softmax(Q Kᵀ · s [+ mask]) V in matmul / bmm / einsum form. Modules that look like
attention but hold no softmax attention (e.g. Sana's ReLU linear attention) are reported unmatched.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .site import Site, block_of, module_of

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
SDPA_VARIANTS = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_attention_math.default,
}
MATMULS = {aten.matmul.default, aten.bmm.default}
SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}


@dataclass
class MatchResult:
    sites: list[Site]
    canonicalised: int = 0
    unmatched_modules: dict[str, str] = field(default_factory=dict)


def _val(n):
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _is_last_dim_transpose(n: fx.Node) -> fx.Node | None:
    """k for kᵀ written as transpose(k, -2, -1) / permute swapping the last two dims."""
    if n.op != "call_function":
        return None
    rank = _val(n).dim()
    if n.target == aten.transpose.int:
        dims = {d % rank for d in n.args[1:3]}
        return n.args[0] if dims == {rank - 2, rank - 1} else None
    if n.target == aten.permute.default:
        p = [d % rank for d in n.args[1]]
        want = list(range(rank - 2)) + [rank - 1, rank - 2]
        return n.args[0] if p == want else None
    return None


def _strip_scale(n: fx.Node) -> tuple[fx.Node, float]:
    """(x, s) for x * s or x / s with a Python scalar s."""
    if n.op == "call_function" and n.target in (aten.mul.Tensor, aten.mul.Scalar) and isinstance(n.args[1], (int, float)):
        return n.args[0], float(n.args[1])
    if n.op == "call_function" and n.target in (aten.div.Tensor, aten.div.Scalar) and isinstance(n.args[1], (int, float)):
        return n.args[0], 1.0 / float(n.args[1])
    return n, 1.0


def _einsum_parts(eq: str):
    ins, out = eq.replace(" ", "").split("->")
    a, b = ins.split(",")
    return a, b, out


def _is_pv_equation(eq: str) -> bool:
    """"...ij,...jd->...id": probabilities times values."""
    a, b, out = _einsum_parts(eq)
    return a[:-2] == b[:-2] == out[:-2] and a[-1] == b[-2] and out[-2:] == a[-2] + b[-1]


def _qk_of_scores(n: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    if n.op == "call_function" and n.target in MATMULS:
        kt = _is_last_dim_transpose(n.args[1])
        if kt is not None:
            return n.args[0], kt
    if n.op == "call_function" and n.target == aten.einsum.default:
        a, b, out = _einsum_parts(n.args[0])
        # "...id,...jd->...ij": same batch letters, shared last letter contracted
        if a[:-2] == b[:-2] == out[:-2] and a[-1] == b[-1] and out[-2:] == a[-2] + b[-2]:
            return n.args[1][0], n.args[1][1]
    return None


def _match_manual(softmax: fx.Node):
    """softmax over the last dim of (scale · Q Kᵀ [+ mask]) feeding a single matmul with V."""
    rank = _val(softmax).dim()
    if softmax.args[1] % rank != rank - 1 or len(softmax.users) != 1:
        return None
    pv = next(iter(softmax.users))
    if pv.op != "call_function":
        return None
    if pv.target in MATMULS:
        if pv.args[0] is not softmax:
            return None
    elif pv.target == aten.einsum.default:
        if pv.args[1][0] is not softmax or not _is_pv_equation(pv.args[0]):
            return None
    else:
        return None
    scores, mask = softmax.args[0], None
    if scores.op == "call_function" and scores.target == aten.add.Tensor and isinstance(scores.args[1], fx.Node):
        scores, mask = scores.args
    inner, scale = _strip_scale(scores)
    qk = _qk_of_scores(inner)
    if qk is None:  # scale applied to q before the matmul: (q * s) @ kᵀ
        return None
    q, k = qk
    qs, qscale = _strip_scale(q)
    v = pv.args[1] if pv.target in MATMULS else pv.args[1][1]
    return pv, qs, k, v, mask, scale * qscale


def _canonicalise(gm: fx.GraphModule, node: fx.Node, q, k, v, mask, scale: float) -> fx.Node:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(SDPA, (q, k, v, mask), {"scale": scale})
    new.meta.update({k_: v_ for k_, v_ in node.meta.items() if k_ != "val"})
    new.meta["val"] = node.meta["val"]
    node.replace_all_uses_with(new)
    return new


def _variant_to_sdpa(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """flash/efficient/math variants return tuples whose [0] is the output: replace getitem(node, 0)."""
    names = [a.name for a in node.target._schema.arguments]
    a = dict(zip(names, node.args), **node.kwargs)
    q, k, v = a["query"], a["key"], a["value"]
    mask = a.get("attn_mask", a.get("attn_bias"))
    scale = a.get("scale")
    if a.get("dropout_p", 0.0) or a.get("is_causal", False):
        return None  # not inference attention: leave it alone, it is not a site
    outs = [u for u in node.users if u.target is operator.getitem and u.args[1] == 0]
    others = [u for u in node.users if u not in outs]
    if len(outs) != 1 or any(u.users for u in others):  # logsumexp etc. must be unused
        return None
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(SDPA, (q, k, v, mask), {"scale": scale} if scale is not None else {})
    new.meta.update({k_: v_ for k_, v_ in node.meta.items() if k_ != "val"})
    new.meta["val"] = outs[0].meta["val"]
    outs[0].replace_all_uses_with(new)
    for u in others + outs:
        gm.graph.erase_node(u)
    gm.graph.erase_node(node)
    return new


def _site(node: fx.Node) -> Site:
    q, k, v = (_val(a) for a in node.args[:3])
    module = module_of(node)
    group, idx = block_of(module)
    return Site(node=node, module=module, block=idx, block_group=group, q_len=q.shape[-2], kv_len=k.shape[-2],
                batch=q.shape[0] if q.dim() >= 3 else 1, heads=q.shape[1] if q.dim() == 4 else 1,
                head_dim=q.shape[-1], v_dim=v.shape[-1])


def match_attention(gm: fx.GraphModule, model: torch.nn.Module | None = None) -> MatchResult:
    canon = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in SOFTMAX:
            m = _match_manual(node)
            if m is not None:
                pv, q, k, v, mask, scale = m
                new = _canonicalise(gm, pv, q, k, v, mask, scale)
                new.meta["ditreduce_origin"] = "matmul-softmax"
                canon += 1
        elif node.target in SDPA_VARIANTS:
            if _variant_to_sdpa(gm, node) is not None:
                canon += 1
    if canon:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    sites = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == SDPA:
            s = _site(node)
            s.origin = node.meta.get("ditreduce_origin", "sdpa")
            sites.append(s)
    _number_blocks(sites)
    return MatchResult(sites, canon, _unmatched(model, sites) if model is not None else {})


def _number_blocks(sites: list[Site]) -> None:
    """Global block index: repeated blocks in the order the tokens pass through them (across groups)."""
    order: dict[tuple, int] = {}
    for s in sites:
        if s.block is not None:
            key = (s.block_group, s.block)
            if key not in order:
                order[key] = len(order)
            s.extra["local_block"] = s.block
            s.block = order[key]


def _unmatched(model: torch.nn.Module, sites: list[Site]) -> dict[str, str]:
    """Attention modules (by class name) with no matched softmax-attention site inside."""
    matched = {s.module for s in sites}
    out = {}
    for name, mod in model.named_modules():
        cls = type(mod).__name__
        if not name or "Attention" not in cls or "Processor" in cls:
            continue
        if any(m == name or m.startswith(name + ".") for m in matched):
            continue
        if any(name.startswith(o + ".") for o in out):
            continue
        proc = type(getattr(mod, "processor", None)).__name__ if hasattr(mod, "processor") else cls
        out[name] = f"no softmax attention found (processor {proc}; e.g. linear attention): not matched"
    return out
