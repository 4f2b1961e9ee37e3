"""manifest.json: what an exported run is — variants (ONNX graphs), the step -> variant map for N
steps, every graph's input / output / state tensors with dtypes and static shapes, the schedule and
the model config. Read by the ONNX Runtime and TensorRT runners, `ditreduce build-engines`, the TensorRT lint
and the Triton layout.

State tensors (stateful methods, e.g. DiTo) are graph inputs named `state.<site>.<name>` and graph
outputs named `state_out.<site>.<name>` (ONNX forbids one name for an input and an output): a runner
feeds a variant's state inputs from the previous call's state outputs of the same `<site>.<name>` key
(zeros at the first step of a generation) and keeps them between calls.

Verification (load_manifest(path, verify=True), the default): every file a manifest names resolves inside
its folder (Manifest.file); the manifest holds the sha256 of every graph and of the weights file, and
`plan_sha256`, the hash of everything else it says (steps, variants' plans and tensors, schedule); any
mismatch, missing or malformed field is a BackendError naming the file and the field. verify=False skips
the hashes (huge weights), not the paths or the structure.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BackendError

FORMAT = "ditreduce-onnx/1"
STATE_PREFIX, STATE_OUT_PREFIX = "state.", "state_out."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str                          # ONNX graph input / output name
    dtype: str                         # torch dtype name without "torch.", e.g. float32, int64
    shape: list[Annotated[int, Field(ge=0, le=2**31 - 1)] | str]  # static ints; a str is a named dynamic dim
    path: list[str | int] = Field(default_factory=list)  # where the tensor sits in the call's kwargs

    @field_validator("dtype")
    @classmethod
    def _torch_dtype(cls, v: str) -> str:
        if not isinstance(getattr(torch, v, None), torch.dtype):
            raise ValueError(f"{v!r} is not a torch dtype name (float32, float16, int64, ...)")
        return v

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
    ratio: Annotated[float, Field(ge=0.0, le=1.0)]
    k: Annotated[int, Field(ge=0)]
    n: Annotated[int, Field(ge=0)]


class Variant(_Strict):
    name: str                          # v0, v1, ...
    label: str                         # readable plan, e.g. "dense" or "2/4 sites uniform:0.5 k=8,8"
    onnx: str                          # file name relative to the manifest
    sha256: str | None = None          # of the onnx file (written by export; required by verify)
    plan: list[SiteConfig]             # reduced sites only; every other site runs dense
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)

    @property
    def state_inputs(self) -> list[TensorSpec]:
        return [t for t in self.inputs if t.is_state]

    @property
    def state_outputs(self) -> list[TensorSpec]:
        return [t for t in self.outputs if t.is_state]


class WeightsFile(_Strict):
    path: str
    bytes: Annotated[int, Field(ge=0)]
    tensors: Annotated[int, Field(ge=0)]
    sha256: str | None = None          # of the weights file (written by export; required by verify)


class Manifest(_Strict):
    format: Literal["ditreduce-onnx/1"] = FORMAT
    opset: int
    model_class: str
    config: dict[str, Any]             # the model config (diffusers config.json fields)
    forward_params: list[str]          # the model's forward parameters, to bind positional calls
    constants: dict[str, Any]          # non-tensor call arguments the graphs were traced with
    schedule: dict[str, Any]
    num_steps: Annotated[int, Field(ge=1)]
    steps: list[int]                   # variant index per denoising step
    weights: WeightsFile
    variants: list[Variant] = Field(min_length=1)
    plan_sha256: str | None = None     # plan_hash(): all of the above (written by save_manifest)

    @model_validator(mode="after")
    def _steps_name_variants(self):
        if len(self.steps) != self.num_steps:
            raise ValueError(f"steps: {len(self.steps)} entries for num_steps={self.num_steps}")
        bad = [(i, v) for i, v in enumerate(self.steps) if not 0 <= v < len(self.variants)]
        if bad:
            raise ValueError(f"steps[{bad[0][0]}]: {bad[0][1]} is not a variant index (0..{len(self.variants) - 1})")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names repeat: {names}")
        return self

    def file(self, root: str | Path, relpath: str, field: str = "file") -> Path:
        return manifest_file(root, relpath, field)

    def plan_hash(self) -> str:
        return _json_sha256(self.model_dump(mode="json", exclude={"plan_sha256"}))

    def variant_for_step(self, step: int) -> Variant:
        from ..errors import BackendError

        if not 0 <= step < self.num_steps:
            raise BackendError(f"step {step} is outside the exported run of num_steps={self.num_steps}: "
                               f"export again with num_steps set to the pipeline's number of steps")
        return self.variants[self.steps[step]]


def manifest_file(root: str | Path, relpath: str, field: str = "file") -> Path:
    """root / relpath, which must resolve inside root (no absolute path, no `..` out of it, no link out)."""
    root = Path(root).resolve()
    rel = Path(relpath)
    path = (root / rel).resolve()
    if not relpath or rel.is_absolute() or not path.is_relative_to(root) or path == root:
        raise BackendError(f"{field}: {relpath!r} is not a file inside the manifest's folder {root}; a manifest "
                           "names its files relative to itself")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _json_sha256(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write(model: _Strict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=1))
    return path


def _loc(loc: tuple) -> str:
    """A pydantic error location as a field path, without its union-branch tags (`str`, `constrained-int`)."""
    parts = [p for p in loc if isinstance(p, int) or not ("-" in p or "[" in p or p in ("str", "int", "float", "bool"))]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "<document>"


def _read(cls, path: str | Path, missing: str):
    """cls from a JSON file; a missing, unreadable or malformed file is a BackendError naming file and field."""
    path = Path(path)
    if not path.is_file():
        raise BackendError(f"no {missing.format(path=path)}")
    try:
        return cls.model_validate_json(path.read_bytes())
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        if first["type"] == "json_invalid":
            raise BackendError(f"invalid manifest {path}: not valid JSON (truncated or corrupt): {first['msg']}") from None
        fields = "; ".join(f"{_loc(x['loc'])}: {x['msg'].removeprefix('Value error, ')}" for x in errs[:5])
        raise BackendError(f"invalid manifest {path}: {fields}") from None
    except (OSError, RecursionError, UnicodeDecodeError) as e:
        raise BackendError(f"invalid manifest {path}: cannot read it: {type(e).__name__}: {e}") from None


def _check_file(root: Path, relpath: str, field: str, sha256: str | None, verify: bool, path: Path,
                size: int | None = None) -> Path:
    f = manifest_file(root, relpath, f"{path}: {field}")
    if not verify:
        return f
    if not f.is_file():
        raise BackendError(f"{path}: {field}: {relpath!r} does not exist in {root}")
    if size is not None and f.stat().st_size != size:
        raise BackendError(f"{path}: {field}: {relpath!r} has {f.stat().st_size} bytes, the manifest says {size}")
    if sha256 is None:
        raise BackendError(f"{path}: {field}: no sha256 for {relpath!r}: export again, or load with verify=False "
                           "(--no-verify) to skip the hashes")
    if file_sha256(f) != sha256:
        raise BackendError(f"{path}: {field}: {relpath!r} does not match its sha256 (changed or corrupt since export)")
    return f


_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 9: "bool"}


def _check_graph_io(f: Path, v: Variant, where: str) -> None:
    """The graph's inputs / outputs are the variant's tensor specs (names, static dims, dtypes)."""
    import onnx

    try:
        g = onnx.load(str(f), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 — a corrupt graph, named
        raise BackendError(f"{where}.onnx: {v.onnx!r} is not a readable ONNX graph: {type(e).__name__}") from None
    for kind, specs, values in (("inputs", v.inputs, g.input), ("outputs", v.outputs, g.output)):
        got = {t.name: t.type.tensor_type for t in values}
        for j, spec in enumerate(specs):
            tt = got.get(spec.name)
            dims = None if tt is None else [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim]
            ok = tt is not None and len(dims) == len(spec.shape) and all(
                isinstance(s, str) or s == d for s, d in zip(spec.shape, dims)) and \
                _ONNX_DTYPES.get(tt.elem_type, spec.dtype) == spec.dtype
            if not ok:
                raise BackendError(f"{where}.{kind}[{j}]: {spec.name} {spec.dtype} {spec.shape} is not what graph "
                                   f"{v.onnx!r} has ({'no such tensor' if tt is None else dims})")


def save_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write manifest.json; first records (in `manifest`) the sha256 of its graphs and weights beside `path`
    and then its plan hash: what load_manifest(verify=True) checks."""
    root = Path(path).parent
    for v in manifest.variants:
        v.sha256 = file_sha256(manifest.file(root, v.onnx, "onnx"))
    w = manifest.file(root, manifest.weights.path, "weights.path")
    manifest.weights.sha256 = file_sha256(w) if w.is_file() else None
    manifest.plan_sha256 = manifest.plan_hash()
    return _write(manifest, path)


def load_manifest(path: str | Path, verify: bool = True) -> Manifest:
    """The manifest at `path`, its files checked (see the module doc); verify=False skips the hashes."""
    m = _read(Manifest, path, "manifest at {path}: write one with reduced.export(out_dir, ...) or "
                              "`ditreduce export MODEL SCHEDULE OUT/`")
    path = Path(path)
    root = path.parent
    if verify and m.plan_sha256 != m.plan_hash():
        raise BackendError(f"{path}: plan_sha256: " + ("missing: export again, or load with verify=False (--no-verify)"
                           if m.plan_sha256 is None else "does not match the manifest's steps / variants / schedule "
                           "(edited since export)"))
    for i, v in enumerate(m.variants):
        f = _check_file(root, v.onnx, f"variants[{i}].onnx", v.sha256, verify, path)
        if verify:
            _check_graph_io(f, v, f"{path}: variants[{i}]")
    _check_file(root, m.weights.path, "weights.path", m.weights.sha256, verify, path, m.weights.bytes)
    return m


class EngineEntry(_Strict):
    variant: str                       # the ONNX manifest's variant name
    plan: str                          # serialized engine, relative to the engine manifest
    sha256: str | None = None          # of the plan file (checked when present)
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


def load_engine_manifest(path: str | Path, verify: bool = True) -> EngineManifest:
    """The engine manifest at `path`: its plans inside its folder (hashes checked where recorded), its ONNX
    manifest inside its folder or the one above (build_engines writes OUT/engines/ next to OUT/manifest.json)."""
    m = _read(EngineManifest, path, "engine manifest at {path}: build one with `ditreduce build-engines manifest.json`")
    path = Path(path)
    onnx_manifest(path, m)
    for i, e in enumerate(m.engines):
        f = manifest_file(path.parent, e.plan, f"{path}: engines[{i}].plan")
        if verify and e.sha256 is not None:
            _check_file(path.parent, e.plan, f"engines[{i}].plan", e.sha256, True, path)
        elif verify and not f.is_file():
            raise BackendError(f"{path}: engines[{i}].plan: {e.plan!r} does not exist in {path.parent}")
    return m


def onnx_manifest(engines_json: str | Path, em: EngineManifest) -> Path:
    """The ONNX manifest an engine manifest was built from: inside its folder or the folder above."""
    engines_json = Path(engines_json).resolve()
    return manifest_file(engines_json.parent.parent, str(Path(engines_json.parent.name) / em.onnx_manifest),
                         f"{engines_json}: onnx_manifest")
