"""Build one TensorRT engine per variant of an ONNX manifest (TensorRT Python API: Builder, OnnxParser,
BuilderConfig, an optimisation profile) and write an engine manifest. `ditreduce build-engines` is the CLI.

Weight sharing: with `strip_weights` the engines are built REFIT_IDENTICAL + STRIP_PLAN, so a plan holds
no weights; at load the runner refits each engine from its ONNX graph, whose initializers all point
into the one shared weights.bin. Disk then holds the weights once. `refittable` alone builds REFIT
engines (weights kept, updatable in place).

Precision: fp32 builds as typed in the graph; fp16 / bf16 set the builder precision flag where this
TensorRT has it (TensorRT ≤ 10); TensorRT versions without weak typing need the graph exported in that
dtype (convert the model before export) and build it strongly typed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import BackendError
from .folders import output_dir
from .manifest import EngineEntry, EngineManifest, file_sha256, load_manifest, save_engine_manifest

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPE_OF = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError("TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU and "
                           "driver); without it, `ditreduce check-tensorrt manifest.json` lints the graphs") from e
    return trt


def profile_shapes(shape: list, batch: tuple[int, int, int] | None) -> list[list[int]]:
    """[min, opt, max] for one input. Static graphs (what capture gives) build a one-point profile; a
    batch range needs a graph whose dim 0 is dynamic (a str in the manifest)."""
    if all(isinstance(d, int) for d in shape):
        if batch is not None and tuple(batch) != (shape[0],) * 3:
            raise BackendError(f"--batch {batch} asks for a batch range but the graph was exported with a static "
                               f"batch of {shape[0]}: export once per batch size, or build with --batch omitted")
        return [list(shape)] * 3
    if batch is None or any(not isinstance(d, int) for d in shape[1:]):
        raise BackendError(f"input shape {shape} has dynamic dims: give --batch MIN,OPT,MAX (only dim 0 may vary)")
    return [[b, *shape[1:]] for b in batch]


def require_tensorrt():
    trt = import_tensorrt()
    if not torch.cuda.is_available():
        raise BackendError("backend tensorrt needs a CUDA GPU (torch.cuda.is_available() is False); on CPU use "
                           "backend='onnxruntime' or lint the export with `ditreduce check-tensorrt`")
    return trt


def build_engine(trt, onnx_path: Path, precision: str, profile: dict, refittable: bool, strip_weights: bool,
                 workspace_gib: float = 8.0) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = hasattr(trt.BuilderFlag, "FP16")
    flags = 0 if weak or precision == "fp32" else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # external data resolved next to the graph
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT's ONNX parser rejected {onnx_path.name}:\n{errors}\n"
                           f"`ditreduce check-tensorrt` lists the ops and shapes it does not accept")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision != "fp32" and weak:
        config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    if strip_weights:
        config.set_flag(trt.BuilderFlag.REFIT_IDENTICAL)
        config.set_flag(trt.BuilderFlag.STRIP_PLAN)
    elif refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        opt.set_shape(name, *[tuple(s) for s in profile[name]])
    config.add_optimization_profile(opt)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendError(f"TensorRT could not build an engine for {onnx_path.name} (see the log above)")
    return bytes(plan)


def build_engines(manifest_path: str | Path, out_dir: str | Path, precision: str = "fp16",
                  batch: tuple[int, int, int] | None = None, refittable: bool = True,
                  strip_weights: bool = False) -> Path:
    if precision not in PRECISIONS:
        raise BackendError(f"precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    trt = require_tensorrt()  # BackendError without TensorRT or without a CUDA GPU
    manifest_path = Path(manifest_path).resolve()
    out = output_dir(Path(out_dir).resolve(), "build-engines")
    m = load_manifest(manifest_path)
    weak = hasattr(trt.BuilderFlag, "FP16")
    entries = []
    for v in m.variants:
        if not weak and precision != "fp32" and v.inputs[0].dtype != _DTYPE_OF[precision]:
            raise BackendError(f"this TensorRT builds strongly typed networks only: export the model in "
                               f"{_DTYPE_OF[precision]} to build {precision} engines (the graph is {v.inputs[0].dtype})")
        profile = {t.name: profile_shapes(t.shape, batch) for t in v.inputs}
        plan = build_engine(trt, manifest_path.parent / v.onnx, precision, profile, refittable, strip_weights)
        (out / f"{v.name}.plan").write_bytes(plan)
        entries.append(EngineEntry(variant=v.name, plan=f"{v.name}.plan", profile=profile, sha256=file_sha256(out / f"{v.name}.plan")))
    import os

    em = EngineManifest(onnx_manifest=os.path.relpath(manifest_path, out), precision=precision,
                        refittable=refittable or strip_weights, weight_stripped=strip_weights,
                        tensorrt_version=trt.__version__, engines=entries)
    return save_engine_manifest(em, out / "engines.json")
