"""`ditreduce export --triton`: an exported run laid out as a Triton Inference Server model repository.

    <repo>/ditreduce_v0/config.pbtxt, 1/model.onnx (+ 1/weights.bin, a hard link: one copy on disk)
    <repo>/ditreduce_v1/...
    <repo>/ditreduce_steps/config.pbtxt, 1/model.py, 1/manifest.json   (Python backend: the step loop)

One model per variant (platform onnxruntime_onnx with the TensorRT accelerator, or tensorrt_plan with
`engines=` an engine manifest), plus `ditreduce_steps`, which takes the model inputs and `step`, and calls
the step's variant with a BLS request. State tensors are inputs and outputs of both (the client carries
them between steps), so the server stays stateless. Shapes are static: max_batch_size 0, full dims.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .folders import output_dir
from .manifest import Manifest, TensorSpec, load_engine_manifest, load_manifest

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                "bool": "TYPE_BOOL"}
LOOP = "ditreduce_steps"

_LOOP_PY = '''"""Triton Python backend: run the variant of the request's `step` (manifest.json beside this file)."""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        m = json.loads((Path(__file__).parent / "manifest.json").read_text())
        self.steps = m["steps"]
        self.variants = m["variants"]

    def execute(self, requests):
        responses = []
        for request in requests:
            step = int(pb_utils.get_input_tensor_by_name(request, "step").as_numpy().reshape(-1)[0])
            if not 0 <= step < len(self.steps):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"step {step} outside the exported run of {len(self.steps)} steps")))
                continue
            v = self.variants[self.steps[step]]
            inputs = [pb_utils.get_input_tensor_by_name(request, t["name"]) for t in v["inputs"]]
            if any(t is None for t in inputs):
                missing = [t["name"] for t, x in zip(v["inputs"], inputs) if x is None]
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"missing inputs {missing}")))
                continue
            sub = pb_utils.InferenceRequest(model_name="ditreduce_" + v["name"], inputs=inputs,
                                            requested_output_names=[t["name"] for t in v["outputs"]]).exec()
            if sub.has_error():
                responses.append(pb_utils.InferenceResponse(error=sub.error()))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=sub.output_tensors()))
        return responses
'''


def _tensor(t: TensorSpec, optional: bool = False) -> str:
    dims = ", ".join(str(d) for d in t.shape)
    opt = "\n    optional: true" if optional else ""
    return (f"  {{\n    name: \"{t.name}\"\n    data_type: {TRITON_TYPES[t.dtype]}\n    dims: [ {dims} ]{opt}\n  }}")


def _io(inputs: list[TensorSpec], outputs: list[TensorSpec], optional: set[str] = frozenset()) -> str:
    ins = ",\n".join(_tensor(t, t.name in optional) for t in inputs)
    outs = ",\n".join(_tensor(t) for t in outputs)
    return f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"


def variant_config(name: str, v, platform: str, precision: str) -> str:
    text = f"name: \"{name}\"\nplatform: \"{platform}\"\nmax_batch_size: 0\n" + _io(v.inputs, v.outputs)
    text += "instance_group [\n  {\n    kind: KIND_GPU\n    count: 1\n  }\n]\n"
    if platform == "onnxruntime_onnx":
        text += ("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n      {\n"
                 "        name: \"tensorrt\"\n        parameters { key: \"precision_mode\" value: \""
                 f"{precision.upper()}\" }}\n      }}\n    ]\n  }}\n}}\n")
    return text


def loop_config(m: Manifest) -> str:
    ins, outs, seen_in, seen_out = [], [], set(), set()
    for v in m.variants:
        ins += [t for t in v.inputs if t.name not in seen_in and not seen_in.add(t.name)]
        outs += [t for t in v.outputs if t.name not in seen_out and not seen_out.add(t.name)]
    step = TensorSpec(name="step", dtype="int32", shape=[1])
    state = {t.name for t in ins if t.is_state}
    text = f"name: \"{LOOP}\"\nbackend: \"python\"\nmax_batch_size: 0\n" + _io([step] + ins, outs, state)
    return text + "instance_group [\n  {\n    kind: KIND_CPU\n    count: 1\n  }\n]\n"


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        os.symlink(os.path.relpath(src, dst.parent), dst)


def write_triton_repository(manifest_path: str | Path, repo: str | Path, engines: str | Path | None = None,
                            precision: str = "fp16") -> Path:
    manifest_path = Path(manifest_path)
    m = load_manifest(manifest_path)
    repo = output_dir(repo, "Triton model repository")
    plans = {}
    if engines is not None:
        em = load_engine_manifest(engines)
        plans = {e.variant: Path(engines).parent / e.plan for e in em.engines}
        precision = em.precision
    for v in m.variants:
        name = f"ditreduce_{v.name}"
        ver = repo / name / "1"
        ver.mkdir(parents=True, exist_ok=True)
        if v.name in plans:
            shutil.copyfile(plans[v.name], ver / "model.plan")
            platform = "tensorrt_plan"
        else:
            shutil.copyfile(manifest_path.parent / v.onnx, ver / "model.onnx")
            if not (ver / m.weights.path).exists():
                _link(manifest_path.parent / m.weights.path, ver / m.weights.path)
            platform = "onnxruntime_onnx"
        (repo / name / "config.pbtxt").write_text(variant_config(name, v, platform, precision))
    loop = repo / LOOP / "1"
    loop.mkdir(parents=True, exist_ok=True)
    (loop / "model.py").write_text(_LOOP_PY)
    shutil.copyfile(manifest_path, loop / "manifest.json")
    (repo / LOOP / "config.pbtxt").write_text(loop_config(m))
    return repo
