"""reduced.export(out_dir, num_steps=N, **example_kwargs): one ONNX graph per variant of an N-step run,
one shared weights file, and manifest.json (see manifest.py)."""
from __future__ import annotations

import inspect
import json

import torch

from ..passes.capture import bind_call
from .folders import output_dir, writing_into
from .manifest import Manifest, SiteConfig, Variant, WeightsFile, save_manifest
from .onnx_graph import OPSET, tensor_leaves, to_onnx
from .programs import export_program, require_static_token_counts, run_variants, with_example_state
from .weights import share_weights

WEIGHTS_FILE = "weights.bin"


def _json_safe(value):
    return json.loads(json.dumps(value, default=repr))


def model_config(model) -> dict:
    cfg = getattr(model, "config", None)
    return _json_safe(dict(cfg)) if cfg is not None else {}


def _plan(key: tuple, sites) -> list[SiteConfig]:
    return [SiteConfig(site=s.name, module=s.module or s.name, method=c.method, ratio=c.ratio, k=c.k, n=c.n)
            for s, c in zip(sites, key) if c is not None]


def export_onnx(reduced, out_dir, num_steps: int | None, example_kwargs: dict) -> Manifest:
    out = output_dir(out_dir, "export")
    kw = bind_call(reduced.model, (), example_kwargs) if example_kwargs else {}
    run = run_variants(reduced, num_steps, kw)
    for gm in run.graphs:
        require_static_token_counts(gm, "ONNX export")
    models, variants = {}, []
    for name, label, key, gm in zip(run.names, run.labels, run.keys, run.graphs):
        kw_v = with_example_state(gm, kw)
        proto, ins, outs = to_onnx(export_program(gm, kw_v), kw_v)
        models[name] = proto
        variants.append(Variant(name=name, label=label, onnx=f"{name}.onnx", plan=_plan(key, run.sites),
                                inputs=ins, outputs=outs))
    with writing_into(out, "export"):
        size, count = share_weights(models, out / WEIGHTS_FILE)
        for name, proto in models.items():
            (out / f"{name}.onnx").write_bytes(proto.SerializeToString())
    constants = {".".join(map(str, p)): _json_safe(v) for p, v in tensor_leaves(kw) if not isinstance(v, torch.Tensor)}
    manifest = Manifest(
        opset=OPSET, model_class=type(reduced.model).__name__, config=model_config(reduced.model),
        forward_params=list(inspect.signature(reduced.model.forward).parameters), constants=constants,
        schedule=reduced.schedule.model_dump(mode="json"), num_steps=len(run.steps), steps=run.steps,
        weights=WeightsFile(path=WEIGHTS_FILE, bytes=size, tensors=count), variants=variants)
    with writing_into(out, "export"):
        save_manifest(manifest, out / "manifest.json")
    return manifest
