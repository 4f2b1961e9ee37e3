"""Every spelling of softmax attention is canonicalised to one aten sdpa node, with the same numbers."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditreduce.passes.capture import capture
from ditreduce.passes.match_attention import SDPA, match_attention

aten = torch.ops.aten


class EinsumMasked(nn.Module):
    def forward(self, q, k, v, mask):
        a = torch.einsum("bhid,bhjd->bhij", q, k) * 0.25
        return torch.einsum("bhij,bhjd->bhid", (a + mask).softmax(-1), v)


class Bmm3D(nn.Module):
    def forward(self, q, k, v):
        return torch.bmm(torch.softmax(torch.bmm(q, k.transpose(1, 2)) / 2.0, dim=-1), v)


class PreScaledQ(nn.Module):
    def forward(self, q, k, v):
        return ((q * 0.5) @ k.transpose(-2, -1)).softmax(-1) @ v


class Escaping(nn.Module):
    """The attention probabilities are returned too: rewriting would change an output, so no match."""

    def forward(self, q, k, v):
        p = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        return p @ v, p


def _inputs(three_d=False):
    g = torch.Generator().manual_seed(0)
    shape = (4, 6, 8) if three_d else (2, 2, 6, 8)
    return [torch.randn(*shape, generator=g) for _ in range(3)]


def _run(module, args):
    names = ["q", "k", "v", "mask"][: len(args)]
    kw = dict(zip(names, args))
    gm = capture(module, kw)
    res = match_attention(gm)
    return gm, res, kw


@pytest.mark.parametrize("module,extra,three_d", [
    (EinsumMasked(), [torch.randn(1, 1, 6, 6)], False), (Bmm3D(), [], True), (PreScaledQ(), [], False)])
def test_manual_spellings_become_one_sdpa(module, extra, three_d):
    args = _inputs(three_d) + extra
    gm, res, kw = _run(module, args)
    assert res.canonicalised == 1 and len(res.sites) == 1
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ops.count(SDPA) == 1 and aten.softmax.int not in ops
    torch.testing.assert_close(gm(**kw), module(**kw), rtol=1e-5, atol=1e-6)


def test_no_rewrite_when_the_probabilities_escape():
    gm, res, kw = _run(Escaping(), _inputs())
    assert res.canonicalised == 0 and res.sites == []


def test_flash_variant_from_aot_graphs_is_canonicalised():
    from torch.fx.experimental.proxy_tensor import make_fx

    q, k, v = _inputs()
    gm = make_fx(lambda q, k, v: F.scaled_dot_product_attention(q, k, v) * 2)(q, k, v)
    assert any(n.target == aten._scaled_dot_product_flash_attention_for_cpu.default for n in gm.graph.nodes)
    res = match_attention(gm)
    assert res.canonicalised == 1 and len(res.sites) == 1
    assert not any(n.target == aten._scaled_dot_product_flash_attention_for_cpu.default for n in gm.graph.nodes)
    torch.testing.assert_close(gm(q, k, v), F.scaled_dot_product_attention(q, k, v) * 2)
