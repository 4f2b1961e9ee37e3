"""What the capture drops (no-op copies export keeps) and what a region adds (at most one dense copy of its
strided entry): both measured by counting the full-size copies a call makes, against the dense graph."""
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from ditreduce import compile_with_reduction
from ditreduce.bench.models import resolve_model
from ditreduce.passes.capture import capture

aten = torch.ops.aten
COPIES = {aten.clone.default, aten.copy_.default, aten.copy.default, aten._to_copy.default}


class _CountCopies(TorchDispatchMode):
    """Copies whose output has at least `numel` elements (the token tensor's size)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in COPIES and isinstance(out, torch.Tensor) and out.numel() >= self.numel:
            self.count += 1
        return out


def _copies(fn, numel: int) -> int:
    with torch.no_grad(), _CountCopies(numel) as mode:
        fn()
    return mode.count


class _NoOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, n):
        y = self.drop(self.lin(x)) / 1.0 * 1
        z = y.transpose(1, 2).clone(memory_format=torch.contiguous_format)  # changes the layout: kept
        return y, z, x.clone(), n / 1  # a graph input's clone is kept (no alias); int / 1 promotes: kept


def test_capture_drops_eval_dropout_clones_and_identity_scalars_only():
    m = _NoOps().eval()
    kw = dict(x=torch.randn(2, 5, 8), n=torch.arange(4))
    gm = capture(m, kw)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    clones = [n for n in gm.graph.nodes if n.target == aten.clone.default]
    assert len(clones) == 2  # the layout change and the clone of the input x
    assert sum(t == aten.div.Tensor for t in targets) == 1  # only n / 1 (int64 → float)
    assert aten.mul.Tensor not in targets
    with torch.no_grad():
        for got, ref in zip(gm(**kw), m(**kw)):
            assert got.dtype == ref.dtype and torch.equal(got, ref)


def test_block_region_copies_its_strided_entry_once():
    """PixArt's block input is the transposed patch embedding: every gather, score and residual of a
    block region used to copy it again (15 full-size copies a call at 4096 tokens)."""
    bm = resolve_model("pixart-alpha:256:1")
    x = bm.kwargs["hidden_states"]
    numel = x.shape[0] * 256 * 1152
    dense = compile_with_reduction(bm.module, {"method": "coredit", "ratio": 0.0, "scope": "block"})
    red = compile_with_reduction(bm.module, {"method": "coredit", "ratio": 0.5, "scope": "block"})
    with torch.no_grad():
        ref, got = bm.module(**bm.kwargs), red(**bm.kwargs)  # capture outside the count
        dense(**bm.kwargs)
    assert got[0].shape == ref[0].shape
    n_module = _copies(lambda: bm.module(**bm.kwargs), numel)
    n_dense = _copies(lambda: dense(**bm.kwargs), numel)
    n_red = _copies(lambda: red(**bm.kwargs), numel)
    assert n_dense <= n_module  # the captured graph copies no more than the eager module
    assert n_red <= n_dense + 1
