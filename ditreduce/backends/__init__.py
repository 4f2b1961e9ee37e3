"""Backends: how one variant graph runs. The runtime keeps step tracking and picks the variant; a
backend turns a variant GraphModule into the callable that runs it (once per variant).

    eager        the GraphModule itself
    inductor     torch.compile(fullgraph=True) per variant; first-call (compile) seconds recorded
    onnxruntime  the variant exported to ONNX (dynamo exporter, opset 18) and run by an InferenceSession
    tensorrt     the variant exported to ONNX, built into a TensorRT engine, run on one CUDA stream

Export to disk (ONNX per variant + manifest.json + one shared weights file) is `export.py`; one
ExportedProgram per variant (Torch-TensorRT, AOTInductor) is `programs.py`.
"""
from __future__ import annotations

BACKENDS = ("eager", "inductor", "onnxruntime", "tensorrt")


from ..errors import BackendError  # noqa: E402


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise BackendError(f"backend={name!r} is not a backend; allowed: {', '.join(BACKENDS)}")
    if name == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()
    return name


def prepare_variant(backend: str, reduced, gm, key: tuple, kw: dict):
    """The callable that runs one variant (called as fn(**kw)), made once per (capture, variant key)."""
    import importlib

    module = importlib.import_module(f".{backend}", __name__)
    return module.prepare(gm, kw, variant_label(key), reduced)


def variant_label(key: tuple) -> str:
    """A readable name of a variant key: `dense`, or its reduced sites' distinct method:ratio and k."""
    cfgs = [c for c in key if c is not None]
    if not cfgs:
        return "dense"
    parts = sorted({f"{c.method}:{c.ratio:g}" + (f" {dict(c.params)['phase']}" if "phase" in dict(c.params) else "")
                    for c in cfgs})  # DiTo's prime / match / reduce variants share method and ratio
    ks = ",".join(str(k) for k in sorted({c.k for c in cfgs}))
    return f"{len(cfgs)}/{len(key)} sites " + ",".join(parts) + f" k={ks}"


__all__ = ["BACKENDS", "BackendError", "check_backend", "prepare_variant", "variant_label"]
