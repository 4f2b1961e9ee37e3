"""FLOPs as torch.utils.flop_counter counts them (matmuls, convolutions, attention), of a call or of a
graph run on fake tensors (no compute: counting a 16k-token variant costs nothing)."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _cpu_sdpa(q, k, v, *args, **kwargs):
    return sdpa_flop_count(q, k, v)


# CPU sdpa dispatches to a kernel the counter has no formula for: it gets sdpa's
CUSTOM_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}


@dataclass(frozen=True)
class Flops:
    whole: int
    attention: int


def count_flops(fn: Callable[[], object]) -> Flops:
    """FLOPs of running fn() once (no gradient)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=CUSTOM_FORMULAS) as counter:
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    attention = sum(v for op, v in per_op.items() if "scaled_dot_product" in str(op))
    return Flops(int(counter.get_total_flops()), int(attention))


def fake_mode() -> FakeTensorMode:
    """A fake mode for re-running captured graphs: real parameters allowed, and a shape environment so
    that data-dependent ops a model already had (boolean-mask indexing) get unbacked sizes."""
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())


def fake_inputs(gm: fx.GraphModule, mode: FakeTensorMode) -> list:
    """Fresh fake tensors in `mode` shaped like gm's placeholders (from their meta["val"])."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            v = node.meta.get("val")
            out.append(mode.from_tensor(torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device))
                       if isinstance(v, torch.Tensor) else v)
    return out


def graph_flops(gm: fx.GraphModule, ref: fx.GraphModule | None = None) -> Flops:
    """FLOPs of one run of a captured / rewritten graph, on fake tensors shaped like ref's inputs (and gm's own
    for the inputs it adds after them: a stateful variant's state)."""
    mode = fake_mode()
    args = fake_inputs(ref if ref is not None else gm, mode)
    state = gm.meta.get("ditreduce_state")
    if ref is not None and state:   # the state placeholders follow the captured ones, in the state dict's order
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
        args += [mode.from_tensor(torch.empty(shape, dtype=dtype, device=device))
                 for names in state["inputs"].values() for shape, dtype in names.values()]
    with mode, _fake_tensor_log_off():
        return count_flops(lambda: fx.Interpreter(gm).run(*args))


@contextlib.contextmanager
def _fake_tensor_log_off():
    """A graph that cannot run on fake tensors (F.pad by a run-time size) raises, and the caller says so;
    torch's own error log of that failure is not printed on top."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    previous, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = previous
