"""manifest.json: what an exported run is — variants (ONNX graphs), the step -> variant map for N
steps, every graph's input / output / state tensors with dtypes and static shapes, the schedule and
the model config. Read by the ONNX Runtime and TensorRT runners, build_engines.py, the TensorRT lint
and the Triton layout.

State tensors (stateful methods, e.g. DiTo) are graph inputs named `state.<site>.<name>` and graph
outputs named `state_out.<site>.<name>` (ONNX forbids one name for an input and an output): a runner
feeds a variant's state inputs from the previous call's state outputs of the same `<site>.<name>` key
(zeros at the first step of a generation) and keeps them between calls.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMAT = "ditreduce-onnx/1"
STATE_PREFIX, STATE_OUT_PREFIX = "state.", "state_out."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str                          # ONNX graph input / output name
    dtype: str                         # torch dtype name without "torch.", e.g. float32, int64
    shape: list[int | str]             # static ints; a str is a named dynamic dim
    path: list[str | int] = Field(default_factory=list)  # where the tensor sits in the call's kwargs

    @property
    def is_state(self) -> bool:
        return self.name.startswith((STATE_PREFIX, STATE_OUT_PREFIX))

    @property
    def state_key(self) -> str:
        """`<site>.<name>`: what pairs a state input with the state output that feeds it next call."""
        return self.name.split(".", 1)[1]


class SiteConfig(_Strict):
    site: str
    module: str
    method: str
    ratio: float
    k: int
    n: int


class Variant(_Strict):
    name: str                          # v0, v1, ...
    label: str                         # readable plan, e.g. "dense" or "2/4 sites uniform:0.5 k=8,8"
    onnx: str                          # file name relative to the manifest
    plan: list[SiteConfig]             # reduced sites only; every other site runs dense
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def state_inputs(self) -> list[TensorSpec]:
        return [t for t in self.inputs if t.is_state]

    @property
    def state_outputs(self) -> list[TensorSpec]:
        return [t for t in self.outputs if t.is_state]


class WeightsFile(_Strict):
    path: str
    bytes: int
    tensors: int


class Manifest(_Strict):
    format: Literal["ditreduce-onnx/1"] = FORMAT
    opset: int
    model_class: str
    config: dict[str, Any]             # the model config (diffusers config.json fields)
    forward_params: list[str]          # the model's forward parameters, to bind positional calls
    constants: dict[str, Any]          # non-tensor call arguments the graphs were traced with
    schedule: dict[str, Any]
    num_steps: int
    steps: list[int]                   # variant index per denoising step
    weights: WeightsFile
    variants: list[Variant]

    def variant_for_step(self, step: int) -> Variant:
        from ..errors import BackendError

        if not 0 <= step < self.num_steps:
            raise BackendError(f"step {step} is outside the exported run of num_steps={self.num_steps}: "
                               f"export again with num_steps set to the pipeline's number of steps")
        return self.variants[self.steps[step]]


def _write(model: _Strict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=1))
    return path


def _read(cls, path: str | Path, missing: str):
    """cls from a JSON file; a missing file is a BackendError that says how to make one."""
    from ..errors import BackendError

    path = Path(path)
    if not path.is_file():
        raise BackendError(f"no {missing.format(path=path)}")
    return cls.model_validate_json(path.read_text())


def save_manifest(manifest: Manifest, path: str | Path) -> Path:
    return _write(manifest, path)


def load_manifest(path: str | Path) -> Manifest:
    return _read(Manifest, path, "manifest at {path}: write one with reduced.export(out_dir, ...) or "
                                 "`ditreduce export MODEL SCHEDULE OUT/`")


class EngineEntry(_Strict):
    variant: str                       # the ONNX manifest's variant name
    plan: str                          # serialized engine, relative to the engine manifest
    profile: dict[str, list[list[int]]]  # input name -> [min, opt, max] shapes


class EngineManifest(_Strict):
    format: Literal["ditreduce-trt/1"] = "ditreduce-trt/1"
    onnx_manifest: str                 # path of manifest.json, relative to the engine manifest
    precision: Literal["fp32", "fp16", "bf16"]
    refittable: bool
    weight_stripped: bool              # engines hold no weights: refit from the ONNX weights file at load
    tensorrt_version: str
    engines: list[EngineEntry]


def save_engine_manifest(m: EngineManifest, path: str | Path) -> Path:
    return _write(m, path)


def load_engine_manifest(path: str | Path) -> EngineManifest:
    return _read(EngineManifest, path, "engine manifest at {path}: build one with tools/build_engines.py manifest.json")
