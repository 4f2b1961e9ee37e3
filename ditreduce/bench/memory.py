"""Peak memory of one call: bytes of live CPU tensor storages, tracked like tracemalloc tracks Python objects.

`track_tensor_memory()` is a TorchDispatchMode that records the storage of every tensor an aten op
returns and frees it from the count when the storage is garbage-collected (weakref finalizer). The peak
is the most bytes alive at once among the storages *created during the call* — activations and
temporaries; the weights, allocated before, are reported separately as `param_bytes`. Buffers a kernel
allocates internally and frees before returning (e.g. inside fused sdpa) are not seen. Process-wide
peak RSS (`resource.getrusage`) is also recorded in the results, but it is a high-water mark of the
whole process and cannot separate configurations.

On a CUDA device the peak is torch.cuda.max_memory_allocated over the call, less what was allocated
before it (the caching allocator's view: every tensor the call creates, kernels' workspaces included).
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _Tracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}   # id(storage) -> bytes, alive ones

    def _free(self, key: int):
        self.live -= self._seen.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                key = id(st)  # python storage objects are cached per storage while alive
                if key not in self._seen and st.nbytes() > 0:
                    self._seen[key] = st.nbytes()
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, key)
        return out


@contextlib.contextmanager
def track_tensor_memory():
    """with track_tensor_memory() as m: ...; m.peak is the peak of live tensor bytes created inside."""
    tracker = _Tracker()
    with tracker:
        yield tracker


def peak_call_bytes(fn, device: str = "cpu") -> int:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.no_grad(), track_tensor_memory() as m:
        fn()
    return m.peak


def what(device: str = "cpu") -> str:
    """What peak_call_bytes measures on `device` (MemoryRecord.what)."""
    if str(device).startswith("cuda"):
        return "peak CUDA bytes allocated during one call above those allocated before (torch.cuda.max_memory_allocated)"
    return "peak bytes of live CPU tensor storages created during one call (TorchDispatchMode tracker)"


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def process_peak_rss_bytes() -> int:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024
