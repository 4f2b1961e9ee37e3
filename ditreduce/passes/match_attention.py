"""Pass 2 — match attention: find every softmax attention and canonicalise it to one
aten.scaled_dot_product_attention node.

Spellings matched: aten.scaled_dot_product_attention and its flash / efficient / math variants, and
hand-written softmax(Q Kᵀ · s [+ mask]) V in matmul / bmm / baddbmm / einsum form, as research code
writes it: the scale folded into q (or k), a float additive mask or a boolean
masked_fill(~keep, -max) (→ sdpa's boolean keep mask), softmax with dtype=float32 and casts around
it, dropout in eval. Sites whose sequence length is data-dependent are kept and skipped with that reason. Modules that look like
attention but hold no softmax attention (e.g. Sana's ReLU linear attention) are reported unmatched.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from .site import Site, block_of, module_of, where

aten = torch.ops.aten
SDPA = aten.scaled_dot_product_attention.default
SDPA_VARIANTS = {
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_attention_math.default,
}
MATMULS = {aten.matmul.default, aten.bmm.default}
# value-preserving single-input ops between the attention's pieces (dropout only with train=False)
PASS_THROUGH = {aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default, aten.clone.default,
                aten.contiguous.default, aten.alias.default, aten.detach.default, aten.dropout.default}
IGNORED_USERS = {aten._assert_tensor_metadata.default}
MASK_FILL_MAX = -1e4  # masked_fill values at or below this give probability 0 exactly (exp underflows)
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
    """(x, s) for x * s, s * x or x / s with a Python scalar s."""
    if n.op == "call_function" and n.target in (aten.mul.Tensor, aten.mul.Scalar):
        if isinstance(n.args[1], (int, float)) and not isinstance(n.args[1], bool):
            return n.args[0], float(n.args[1])
        if isinstance(n.args[0], (int, float)) and not isinstance(n.args[0], bool):
            return n.args[1], float(n.args[0])
    if n.op == "call_function" and n.target in (aten.div.Tensor, aten.div.Scalar) and isinstance(n.args[1], (int, float)):
        return n.args[0], 1.0 / float(n.args[1])
    return n, 1.0


def _through_casts(n: fx.Node) -> fx.Node:
    """Skip dtype casts and copies that do not change values a softmax attention reads (fp32 upcasts of
    q / k are value-preserving; the canonical sdpa runs in the output dtype)."""
    while n.op == "call_function" and n.target in PASS_THROUGH and _only_data_arg(n):
        n = n.args[0]
    return n


def _only_data_arg(n: fx.Node) -> bool:
    if n.target in (aten.dropout.default,):
        return not (n.args[2] if len(n.args) > 2 else n.kwargs.get("train", False))
    return True


def _einsum_parts(eq: str):
    ins, out = eq.replace(" ", "").split("->")
    a, b = ins.split(",")
    return a, b, out


def _is_pv_equation(eq: str) -> bool:
    """"...ij,...jd->...id": probabilities times values."""
    a, b, out = _einsum_parts(eq)
    return a[:-2] == b[:-2] == out[:-2] and a[-1] == b[-2] and out[-2:] == a[-2] + b[-1]


def _qk_of_scores(n: fx.Node) -> tuple[fx.Node, fx.Node, float] | None:
    """(q, k, scale) of Q Kᵀ written as matmul / bmm with kᵀ, baddbmm(·, q, kᵀ, beta=0, alpha=s), or einsum."""
    if n.op != "call_function":
        return None
    if n.target in MATMULS:
        kt = _is_last_dim_transpose(_through_casts(n.args[1]))
        if kt is not None:
            return n.args[0], kt, 1.0
    if n.target == aten.baddbmm.default:
        beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
        kt = _is_last_dim_transpose(_through_casts(n.args[2]))
        if beta == 0 and kt is not None and isinstance(alpha, (int, float)):
            return n.args[1], kt, float(alpha)
    if n.target == aten.einsum.default and len(n.args[1]) == 2:
        a, b, out = _einsum_parts(n.args[0])
        # "...id,...jd->...ij": same batch letters, shared last letter contracted
        if a[:-2] == b[:-2] == out[:-2] and a[-1] == b[-1] and out[-2:] == a[-2] + b[-2]:
            return n.args[1][0], n.args[1][1], 1.0
    return None


def _real_users(n: fx.Node) -> list[fx.Node]:
    return [u for u in n.users if u.target not in IGNORED_USERS]


def _pv_of(softmax: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """(pv node, v) where the probabilities (through casts / eval dropout) feed one matmul with V."""
    p = softmax
    while True:
        users = _real_users(p)
        if len(users) != 1:
            return None
        u = users[0]
        if u.op == "call_function" and u.target in PASS_THROUGH and u.args[0] is p and _only_data_arg(u):
            p = u
            continue
        break
    if u.op != "call_function":
        return None
    if u.target in MATMULS and u.args[0] is p:
        return u, u.args[1]
    if u.target == aten.einsum.default and len(u.args[1]) == 2 and u.args[1][0] is p and _is_pv_equation(u.args[0]):
        return u, u.args[1][1]
    return None


def _mask_fill(n: fx.Node):
    """(scores, keep_mask, drop_mask) for masked_fill(scores, drop, v ≤ MASK_FILL_MAX); the keep mask is
    the operand of a `~` / logical_not when there is one (else None: the drop mask is negated later)."""
    if n.op != "call_function" or n.target != aten.masked_fill.Scalar:
        return None
    value = n.args[2]
    if not isinstance(value, (int, float)) or value > MASK_FILL_MAX:
        return None
    drop = n.args[1]
    if drop.op == "call_function" and drop.target in (aten.bitwise_not.default, aten.logical_not.default):
        return n.args[0], drop.args[0], drop
    return n.args[0], None, drop


def _match_manual(softmax: fx.Node):
    """softmax over the last dim of (scale · Q Kᵀ [+ mask | masked_fill]) feeding a single matmul with V.

    Peeled from the softmax input inwards: casts, a scalar scale (anywhere outside an additive mask), one
    additive float mask or one boolean masked_fill with a large negative value, then Q Kᵀ (matmul, bmm,
    baddbmm with beta 0, einsum), with scalars folded into q or k before the product.
    """
    rank = _val(softmax).dim()
    if softmax.args[1] % rank != rank - 1:
        return None
    pv = _pv_of(softmax)
    if pv is None:
        return None
    pv, v = pv
    n, scale, mask = softmax.args[0], 1.0, None
    while True:
        n = _through_casts(n)
        inner, s = _strip_scale(n)
        if inner is not n:
            scale *= s
            n = inner
            continue
        if mask is None and n.op == "call_function" and n.target == aten.add.Tensor and isinstance(n.args[1], fx.Node):
            if scale != 1.0:  # (QKᵀ + m)·s is not sdpa's QKᵀ·s + m
                return None
            n, mask = n.args[0], ("add", n.args[1])
            continue
        fill = _mask_fill(n) if mask is None else None
        if fill is not None:
            n, keep, drop = fill
            mask = ("keep", keep) if keep is not None else ("drop", drop)
            continue
        break
    qk = _qk_of_scores(n)
    if qk is None:
        return None
    q, k, s = qk
    q, qscale = _strip_scale(_through_casts(q))
    k, kscale = _strip_scale(_through_casts(k))
    scale *= s * qscale * kscale
    if scale <= 0:
        return None
    return pv, _through_casts(q), _through_casts(k), _through_casts(v), mask, scale


def _cast(gm, x: fx.Node, dtype) -> fx.Node:
    if _val(x).dtype == dtype:
        return x
    c = gm.graph.call_function(aten._to_copy.default, (x,), {"dtype": dtype})
    c.meta["val"] = _val(x).to(dtype)
    return c


def _canonicalise(gm: fx.GraphModule, node: fx.Node, q, k, v, mask, scale: float) -> fx.Node:
    """One sdpa in the dtype of the attention's output; a boolean drop mask becomes sdpa's keep mask."""
    dtype = node.meta["val"].dtype
    with gm.graph.inserting_before(node):
        q, k, v = (_cast(gm, x, dtype) for x in (q, k, v))
        if mask is None:
            m = None
        elif mask[0] == "keep":
            m = mask[1]
        elif mask[0] == "drop":
            m = gm.graph.call_function(aten.logical_not.default, (mask[1],))
            m.meta["val"] = torch.logical_not(_val(mask[1]))
        else:
            m = _cast(gm, mask[1], dtype) if _val(mask[1]).is_floating_point() else mask[1]
        new = gm.graph.call_function(SDPA, (q, k, v, m), {"scale": scale})
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
    dims = (q.shape[-2], k.shape[-2], q.shape[0] if q.dim() >= 3 else 1, q.shape[1] if q.dim() == 4 else 1,
            q.shape[-1], v.shape[-1])
    static = all(isinstance(d, int) for d in dims)
    q_len, kv_len, batch, heads, head_dim, v_dim = (d if isinstance(d, int) else -1 for d in dims)
    site = Site(node=node, module=module, block=idx, block_group=group, q_len=q_len, kv_len=kv_len,
                batch=batch, heads=heads, head_dim=head_dim, v_dim=v_dim)
    if not static:
        origin = _size_origin(node)
        at = f", set by {where(origin)}" if origin is not None else ""
        why = (f"data-dependent shape: the sequence length is only known at run time{at} (e.g. a loop "
               "over the valid tokens of each sample); ditreduce needs static token counts (only text read per sample may "
               "have a run-time length): pad the sequence to a fixed length and pass the padding as an attention mask "
               "instead")
        if all(isinstance(d, int) for d in dims[2:]):   # only the token counts: layout decides (text is allowed)
            site.run_time_reason = why
        else:
            site.skip_reason = why
    return site


def _dynamic(v) -> bool:
    if isinstance(v, (tuple, list)):
        return any(_dynamic(x) for x in v)
    return isinstance(v, torch.Tensor) and not all(isinstance(d, int) for d in v.shape)


def _size_origin(node: fx.Node, limit: int = 2000) -> fx.Node | None:
    """The op whose output size first became data-dependent on the way to `node` (e.g. a boolean-mask index
    of the text, `text[mask]`): a dynamic-shaped node none of whose inputs is."""
    seen, stack = set(), [node]
    while stack and len(seen) < limit:
        n = stack.pop()
        if n in seen or not isinstance(n, fx.Node):
            continue
        seen.add(n)
        ins = [a for a in n.all_input_nodes if _dynamic(_val(a))]
        if _dynamic(_val(n)) and not ins and n.op == "call_function":
            return n
        stack.extend(ins)
    return None


def match_attention(gm: fx.GraphModule, model: torch.nn.Module | None = None) -> MatchResult:
    canon, failed = 0, {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in SOFTMAX | SDPA_VARIANTS:
            continue
        try:
            canon += _match_one(gm, node)
        except Exception as e:  # noqa: BLE001 — a spelling the matcher cannot read: reported, never raised raw
            failed[module_of(node) or node.name] = f"attention matching failed here ({type(e).__name__}: {e}); left dense"
    if canon or failed:
        _remove_dead(gm)
        gm.recompile()
    sites = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == SDPA:
            s = _site(node)
            s.origin = node.meta.get("ditreduce_origin", "sdpa")
            sites.append(s)
    _number_blocks(sites)
    for s in sites:
        s.owners = _owners(s)
    unmatched = _unmatched(model, sites, gm) if model is not None else {}
    return MatchResult(sites, canon, {**unmatched, **failed})


def _match_one(gm: fx.GraphModule, node: fx.Node) -> int:
    """Canonicalise one softmax-attention or sdpa-variant node; 1 if it was rewritten."""
    if node.target in SOFTMAX:
        m = _match_manual(node)
        if m is None:
            return 0
        pv, q, k, v, mask, scale = m
        _canonicalise(gm, pv, q, k, v, mask, scale).meta["ditreduce_origin"] = "matmul-softmax"
        return 1
    return int(_variant_to_sdpa(gm, node) is not None)


def _remove_dead(gm: fx.GraphModule) -> None:
    """Dead-code elimination that also drops metadata asserts left on the replaced softmax chain."""
    while True:
        gm.graph.eliminate_dead_code()
        asserts = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in IGNORED_USERS
                   and isinstance(n.args[0], fx.Node) and len(n.args[0].users) == 1]
        if not asserts:
            return
        for n in asserts:
            gm.graph.erase_node(n)


def _number_blocks(sites: list[Site]) -> None:
    """Global block index: repeated blocks in the order the tokens pass through them (across groups)."""
    order: dict[tuple, int] = {}
    for s in sites:
        if s.block is not None:
            key = (s.block_group, s.block)
            if key not in order:
                order[key] = len(order)
            s.block = order[key]


PROJECTIONS = {aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default, aten.bmm.default}
_OWNER_WALK = 64  # nodes: q / k / v reach their projections in a few ops (views, norms, RoPE, casts)


def _projection_owner(n: fx.Node) -> str:
    """The module that holds a projection: the owner of an nn.Linear by path (attn.to_q → attn, even when the
    parent calls attn.to_q directly), else the module that called F.linear."""
    stack = list((n.meta.get("nn_module_stack") or {}).values())
    path = module_of(n)
    if stack and "Linear" in str(stack[-1][1]) and "." in path:
        return path.rsplit(".", 1)[0]
    return path


def _owners(site: Site) -> tuple[str, ...]:
    """The modules whose projections feed the site: backwards from q / k / v and forwards from the output to
    the first projection (with a weight, not the attention's own products) on each path."""
    found: list[str] = []

    def walk(starts, step):
        seen, stack = set(), list(starts)
        while stack and len(seen) < _OWNER_WALK:
            n = stack.pop()
            if not isinstance(n, fx.Node) or n in seen or n.op != "call_function":
                continue
            seen.add(n)
            if n.target in PROJECTIONS and any(isinstance(a, fx.Node) and a.op == "get_attr" for a in n.all_input_nodes):
                m = _projection_owner(n)
                if m and m not in found:
                    found.append(m)
                continue
            if n.target == SDPA and n is not site.node:
                continue
            stack.extend(step(n))

    walk(site.node.args[:3], lambda n: n.all_input_nodes)
    walk(list(site.node.users), lambda n: list(n.users))
    return tuple(m for m in found if m != site.module)


def _unmatched(model: torch.nn.Module, sites: list[Site], gm: fx.GraphModule) -> dict[str, str]:
    """Attention modules (by class name) with no matched softmax-attention site inside, and none whose
    projections feed a matched site (a module holding only projections while its parent runs the sdpa)."""
    matched = {s.module for s in sites} | {m for s in sites for m in s.owners}
    ran = {module_of(n) for n in gm.graph.nodes if n.op == "call_function"}
    out = {}
    for name, mod in model.named_modules():
        cls = type(mod).__name__
        if not name or "Attention" not in cls or "Processor" in cls:
            continue
        if any(m == name or m.startswith(name + ".") for m in matched):
            continue
        if any(name.startswith(o + ".") for o in out):
            continue
        if not any(m == name or m.startswith(name + ".") for m in ran):
            out[name] = "not called in this forward (e.g. an optional input was absent): nothing to reduce"
            continue
        proc = type(getattr(mod, "processor", None)).__name__ if hasattr(mod, "processor") else cls
        out[name] = f"no softmax attention found (processor {proc}; e.g. linear attention): not matched"
    return out
