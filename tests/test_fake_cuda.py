"""GPU-shaped checks without a GPU: every method × scope variant of a few zoo families is captured and
rewritten with the model on a non-CPU device in bf16 / fp16 (meta), then each variant graph runs under
FakeTensorMode with its parameters and inputs on `cuda`. A constant the rewrite or a method leaves on
CPU is a FakeTensorDeviceMismatchError there; a float32 literal that promotes the half-precision
stream, or an index dtype mix, shows in the output's dtype against the dense graph's, which is the model's
dtype in every case (the hand-written DiT is zoo.handdit_typed: zoo.handdit's float32 timestep makes its
output float32 in any dtype, so a region promoted to float32 would not show)."""
import copy
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
from ditreduce import compile_with_reduction
from ditreduce.backends.programs import export_program

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)
METHODS = ["uniform", "random", "coredit", "tome", "todo", "dito"]
SCOPES = ["attention", "attention+proj", "block"]
DITO_PHASES = ("prime", "match", "reduce")  # interval 2: a DiTo run of three steps has one of each
# position ids have no values on meta: these families state their layout in the schedule
LAYOUTS = {"flux": {"grid": [4, 4], "text_tokens": 6, "text_position": "before"}}


def _getitem(t, idx):
    """Tensor indexing as aten ops: the Python binding takes a CUDA device guard this build lacks."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    used = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out, dim, adv = t, 0, {}
    for i in idx:
        if i is Ellipsis:
            dim += t.dim() - used
        elif i is None:
            out, dim = aten.unsqueeze.default(out, dim), dim + 1
        elif isinstance(i, int):
            out = aten.select.int(out, dim, i)
        elif isinstance(i, slice):
            out, dim = aten.slice.Tensor(out, dim, i.start, i.stop, i.step or 1), dim + 1
        else:
            adv[dim], dim = i, dim + 1
    if adv:
        out = aten.index.Tensor(out, [adv.get(d) for d in range(max(adv) + 1)])
    return out


class _NoDeviceGuard(TorchFunctionMode):
    """Routes the two Tensor methods whose Python bindings need a real CUDA runtime through aten."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__:
            return _getitem(*args)
        if func is torch.Tensor.contiguous:
            return args[0] if args[0].is_contiguous() else aten.clone.default(args[0], memory_format=torch.contiguous_format)
        return func(*args, **(kwargs or {}))


def _to_fake_cuda(gm, mode):
    """The graph as if captured on cuda: meta constants become fake cuda tensors, factory calls target
    cuda. Real CPU tensors stay CPU (the fake mode wraps them as they are)."""
    def fake(t):
        return FakeTensor(mode, t.detach(), CUDA)

    for node in gm.graph.nodes:
        if node.kwargs.get("device") == torch.device("meta"):
            node.kwargs = {**node.kwargs, "device": CUDA}
        if node.op != "get_attr":
            continue
        owner, _, leaf = node.target.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        t = getattr(mod, leaf)
        if isinstance(t, torch.Tensor) and t.device.type == "meta":
            if leaf in mod._parameters:
                mod._parameters[leaf] = torch.nn.Parameter(fake(t), requires_grad=False)
            elif leaf in mod._buffers:
                mod._buffers[leaf] = fake(t)
            else:
                object.__setattr__(mod, leaf, fake(t))
    gm.recompile()
    return lambda t: fake(t) if isinstance(t, torch.Tensor) and t.device.type == "meta" else t


def _run_fake_cuda(gm, kw):
    """The graph's first output under FakeTensorMode on cuda; a stateful variant gets its state inputs as
    fake cuda tensors and must return its state on cuda in the dtypes it declares."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    spec = gm.meta.get("ditreduce_state")
    gm = copy.deepcopy(gm)  # the capture's own graph keeps its meta parameters for the next variants
    fake = _to_fake_cuda(gm, mode)
    with mode, _NoDeviceGuard(), torch.no_grad():
        kw = {k: fake(v) for k, v in kw.items()}
        if spec is None:
            return gm(**kw)[0]
        state = {site: {name: torch.zeros(shape, dtype=dtype, device=CUDA) for name, (shape, dtype) in names.items()}
                 for site, names in spec["inputs"].items()}
        out, extra = gm(**kw, state=state) if state else gm(**kw)
    for site, names in extra["state"].items():
        for name, t in names.items():
            assert t.device == CUDA and t.dtype == spec["outputs"][site][name][1], (site, name, t.device, t.dtype)
    return out[0]


HAND = {"handdit": zoo.handdit, "handdit_typed": zoo.handdit_typed}


def _meta_model(family, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, kw = HAND[family]() if family in HAND else zoo.build(family)
        model = model.to("meta", dtype)
    kw = {k: v.to("meta", dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor) else v
          for k, v in kw.items()}
    return model, (kw if family in HAND else dict(kw, return_dict=False))


IN_GRAPH = ["coredit", "tome", "dito"]  # selections computed in the graph (static ones are graph constants)
CASES = [("handdit_typed", torch.bfloat16, METHODS), ("handdit_typed", torch.float16, METHODS),
         ("sd3", torch.bfloat16, IN_GRAPH), ("flux", torch.float16, IN_GRAPH),
         pytest.param("sd3", torch.float16, METHODS, marks=pytest.mark.slow),
         pytest.param("flux", torch.bfloat16, METHODS, marks=pytest.mark.slow),
         pytest.param("pixart", torch.bfloat16, METHODS, marks=pytest.mark.slow),
         pytest.param("wan", torch.float16, METHODS, marks=pytest.mark.slow)]


def _steps(methods):
    """(method, scope, reduced) per step: one step per (method, scope); DiTo's run starts with a prime step
    (k = N), then match and reduce in each scope (a scope change continues the run: no new prime)."""
    out = []
    for m in methods:
        # DiTo primes in the widest scope, where even its k = N selection gathers the region's entry
        for j, s in enumerate(SCOPES[::-1] if m == "dito" else SCOPES):
            phases = (DITO_PHASES if j == 0 else DITO_PHASES[1:]) if m == "dito" else ("reduce",)
            out += [(m, s, phase != "prime") for phase in phases]
    return out


def _schedule(family, steps):
    rules = []
    for i, (m, s, _) in enumerate(steps):  # one rule per (method, scope)
        if rules and (rules[-1]["method"], rules[-1]["scope"]) == (m, s):
            rules[-1]["steps"].append(i)
        else:
            rules.append({"steps": [i], "method": m, "scope": s})
    sched = {"ratio": 0.5, "num_steps": len(steps), "rules": rules, "params": {"dito": {"interval": 2}}}
    return sched | ({"layout": LAYOUTS[family]} if family in LAYOUTS else {})


@pytest.mark.parametrize("family,dtype,methods", CASES)
def test_every_variant_runs_on_fake_cuda_in_half_precision(family, dtype, methods):
    model, kw = _meta_model(family, dtype)
    steps = _steps(methods)  # one capture for all
    reduced = compile_with_reduction(model, _schedule(family, steps))
    dense = None
    for i, (method, scope, reduces) in enumerate(steps):
        reduced.set_step(i, len(steps))
        with torch.no_grad():
            reduced(**kw)
        cap = reduced.last_capture
        assert {(c.method, c.k < c.n) for c in reduced.last_key if c is not None} == {(method, reduces)}
        if dense is None:
            dense = _run_fake_cuda(cap.graph, kw)
            assert (dense.device, dense.dtype) == (CUDA, dtype)   # the output follows the model's dtype
        out = _run_fake_cuda(cap.variants[reduced.last_key], kw)
        assert (out.device, out.dtype, out.shape) == (dense.device, dense.dtype, dense.shape), (method, scope)


class _HostCopies(TorchDispatchMode):
    """Records every op that reads a host (CPU) tensor with more than one element and writes a tensor on
    another device: on CUDA each is a synchronising copy from pageable memory."""

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        host = [a for a in args if isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.numel() > 1]
        if host and isinstance(out, torch.Tensor) and out.device.type != "cpu":
            self.copies.append(f"{func}{tuple(host[0].shape)}")
        return out


def test_no_variant_copies_from_the_host_on_each_call():
    """A variant run on a device other than the CPU (meta here, CUDA in use) reads its constant tables
    from that device: copied there once, never per call. A per-call copy from host memory synchronises
    the CUDA stream before every region (measured on an H200: 28 such copies per ToMe call, 56 per DiTo
    call, each call 2-3x slower than dense; docs/benchmarks.md "On a GPU"). The re-exported program the
    compiled backends build from holds them as constants on the device too."""
    model, kw = _meta_model("handdit", torch.bfloat16)
    steps = _steps(METHODS)   # every method x scope; the tables are the same functions on any model
    reduced = compile_with_reduction(model, _schedule("handdit", steps))
    for i, (method, scope, _) in enumerate(steps):
        reduced.set_step(i, len(steps))
        with torch.no_grad():
            reduced(**kw)
        gm = reduced.last_capture.variants[reduced.last_key]
        spec = gm.meta.get("ditreduce_state")
        call = dict(kw)
        if spec is not None and spec["inputs"]:
            call["state"] = {site: {name: torch.zeros(shape, dtype=dtype, device="meta")
                                    for name, (shape, dtype) in names.items()} for site, names in spec["inputs"].items()}
        for _ in range(2):   # the second call too: nothing is copied again
            with _HostCopies() as seen, torch.no_grad():
                out = gm(**call)
            assert seen.copies == [], (method, scope, seen.copies[:5])
        assert (out[0][0] if isinstance(out[0], tuple) else out[0]).device.type == "meta"
        if method in IN_GRAPH and scope == "attention+proj":
            # the program inductor / ONNX / TensorRT compile holds the tables as constants on the device
            ep = export_program(gm, call)
            assert ep.constants and {v.device.type for v in ep.constants.values()} == {"meta"}, method
            assert not [n for n in ep.graph.nodes if n.target == aten._to_copy.default and "device" in n.kwargs]
