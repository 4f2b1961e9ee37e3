"""Pass 1 — capture: torch.export (non-strict) with the call's real arguments, then
run_decompositions({}) so in-place writes (RoPE by slice assignment) become explicit
slice_scatter / copy nodes while aten.scaled_dot_product_attention stays one node."""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
import warnings

import torch
from torch._subclasses.fake_tensor import is_fake


from ..errors import ModelCallError, UnsupportedModelError  # noqa: F401  (raised here, re-exported)


def bind_call(model: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """All call arguments as keywords (by the forward signature), so export and the step tracker see names."""
    sig = inspect.signature(model.forward)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as e:
        raise ModelCallError(f"{type(model).__name__}.forward{sig}: {e}") from None
    out = {}
    for name, val in bound.arguments.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(val)
        elif sig.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            if val:
                raise UnsupportedModelError(f"{type(model).__name__}.forward takes *{name}; pass arguments by name")
        else:
            out[name] = val
    return out


def capture(model: torch.nn.Module, kwargs: dict) -> torch.fx.GraphModule:
    """The functional ATen graph of `model(**kwargs)`; parameters as get_attr, inputs as placeholders.

    The model's parameters and buffers are the same objects with the same data afterwards, whatever export
    did (a failed export has been seen to leave fake tensors in their place)."""
    name = type(model).__name__
    tensors = _snapshot(model)
    try:
        with torch.no_grad(), _quiet_torch_logs(), quiet_export_warnings():
            ep = torch.export.export(model, (), kwargs, strict=False)
            ep = ep.run_decompositions({})
    except Exception as e:  # noqa: BLE001 — re-raised with the model named, never swallowed
        _restore(model, tensors)
        _raise_if_the_call_fails(model, kwargs)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnsupportedModelError(
            f"{name} cannot be captured with torch.export (non-strict): {type(e).__name__}: {first}\n"
            f"ditreduce rewrites the exported graph and does not fall back to the dense model. "
            f"Models with data-dependent control flow (e.g. sequence packing from mask.tolist()) "
            f"are not supported.") from e
    _restore(model, tensors)
    gm = ep.module()
    _views_to_reshapes(gm)
    _drop_noop_copies(gm)
    return gm


def _snapshot(model: torch.nn.Module) -> list:
    """(owning module, attribute, tensor object, its data) of every parameter and buffer."""
    out = []
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            out.extend((store, key, t, t.data) for key, t in store.items() if t is not None)
    return out


def _restore(model: torch.nn.Module, snapshot: list) -> None:
    for store, key, t, data in snapshot:
        if store.get(key) is not t:
            store[key] = t
        now = t.data
        if is_fake(now) or now.device != data.device or now.shape != data.shape or now.data_ptr() != data.data_ptr():
            t.data = data


def _raise_if_the_call_fails(model: torch.nn.Module, kwargs: dict) -> None:
    """Export failed: run the model eagerly once. If the model itself fails on these arguments (wrong dtype,
    a missing input), the call is at fault, not the model's capturability: ModelCallError names its error."""
    try:
        with torch.no_grad(), _quiet_torch_logs():
            model(**kwargs)
    except Exception as e:  # noqa: BLE001 — the model's own error, named
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelCallError(f"{type(model).__name__} fails on these arguments when run without ditreduce: "
                             f"{type(e).__name__}: {first}") from e
# torch.export's notices about torch internals it uses itself (not the user's code, not the user's to act on):
# pytree's LeafSpec deprecation, raised by the deepcopy inside run_decompositions on every capture.
_TORCH_INTERNAL_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)


@contextlib.contextmanager
def quiet_export_warnings():
    """Hide only the warnings in _TORCH_INTERNAL_WARNINGS (matched by category and message); every other
    warning, the model's own included, is shown as usual. Wrap any torch.export call with it."""
    with warnings.catch_warnings():
        for category, message in _TORCH_INTERNAL_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def _quiet_torch_logs():
    """On an export failure torch prints the whole partial graph to stderr; the failure is re-raised, named,
    instead. What was written is passed on to stderr when the export succeeds."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    buffer = io.StringIO()
    failed = False
    try:
        with contextlib.redirect_stderr(buffer):
            yield
    except BaseException:
        failed = True
        raise
    finally:
        logging.disable(previous)
        if not failed and buffer.getvalue():
            sys.stderr.write(buffer.getvalue())


def _views_to_reshapes(gm: torch.fx.GraphModule) -> None:
    """aten.view → aten.reshape. Export drops a `.contiguous()` that was a no-op for the traced strides
    (nn.MultiheadAttention: sdpa output follows the query's (L, B, H, D) memory order); once a region
    returns another memory order, that view would fail. reshape is the same view where one is possible
    and a copy otherwise — the values are identical, and the graph is functional (no aliasing to keep)."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
            changed = True
    if changed:
        gm.recompile()


_IDENTITY_SCALAR = {torch.ops.aten.div.Tensor: 1, torch.ops.aten.mul.Tensor: 1}


def _drop_noop_copies(gm: torch.fx.GraphModule) -> None:
    """Remove what export keeps of no-op modules: `aten.clone` (eval-mode dropout) and `x / 1.0`, `x * 1`
    (diffusers' rescale_output_factor). Inductor's remove_noop_ops does the same; in an eager graph each
    is a full-size copy (in a reduced graph a third of the saved time at 4096 tokens). The graph is
    functional, so a copy is only kept where its input is a graph input or parameter (the output must
    not alias it) or where it changes the memory format."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op in ("placeholder", "get_attr"):
            continue
        if node.target == torch.ops.aten.clone.default:
            if node.kwargs.get("memory_format", torch.preserve_format) != torch.preserve_format:
                continue
        elif node.target in _IDENTITY_SCALAR:
            other = node.args[1] if len(node.args) > 1 else None
            if isinstance(other, bool) or not isinstance(other, (int, float)) or other != _IDENTITY_SCALAR[node.target]:
                continue
            val, src_val = node.meta.get("val"), src.meta.get("val")
            if val is None or src_val is None or val.dtype != src_val.dtype:
                continue  # an int tensor / 1.0 promotes: not a no-op
        else:
            continue
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()
