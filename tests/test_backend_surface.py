"""The export / backend surface a user meets first: diffusers' output dataclasses (return_dict=True, the
default) through export and every backend, the loaders importable from ditreduce.backends without importing
their engines, clean paths from `ditreduce export`, no dependency noise on a plain export, and a named error
for an output folder that cannot be written."""
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import zoo
from ditreduce import compile_with_reduction
from ditreduce.backends import BackendError
from ditreduce.backends.onnxruntime import load_onnx

TINY_DIT = ('DiTTransformer2DModel:{"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, '
            '"out_channels": 8, "num_layers": 1, "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 1000, '
            '"norm_num_groups": 1}')
# torch's LeafSpec deprecation and the ONNX exporter's "torchvision is not installed. Skipping torchvision::nms"
NOISE = ("torchvision is not installed", "isinstance(treespec, LeafSpec)")


def _sample(out) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else out[0]


# --- 1. diffusers' output dataclasses (Transformer2DModelOutput) round-trip ------------------------------
def test_export_of_a_return_dict_call_names_the_output_by_field_and_runs_like_eager(tmp_path):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    model, kw = zoo.dit(grid=(4, 4))   # called as diffusers calls it: return_dict=True by default
    reduced = compile_with_reduction(model, "uniform-50")
    with torch.no_grad():
        manifest = reduced.export(tmp_path, num_steps=2, **kw)
        ref = reduced(**kw)
        dense = model(**kw).sample
    assert type(ref) is Transformer2DModelOutput
    assert [(t.name, t.shape) for t in manifest.variants[0].outputs] == [("out.sample", [2, 8, 8, 8])]
    got = load_onnx(tmp_path / "manifest.json")(**kw)
    assert type(got) is Transformer2DModelOutput
    assert not torch.allclose(ref.sample, dense, atol=1e-3)   # the reduced variant ran, not the dense graph
    torch.testing.assert_close(got.sample, ref.sample, rtol=1e-4, atol=1e-4)


def test_onnxruntime_backend_returns_the_output_type_of_the_wrapped_model():
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    model, kw = zoo.dit(grid=(4, 4))
    eager = compile_with_reduction(model, "uniform-50")
    ort = compile_with_reduction(model, "uniform-50", backend="onnxruntime")
    with torch.no_grad():
        ref, got = eager(**kw), ort(**kw)
    assert type(got) is type(ref) is Transformer2DModelOutput
    torch.testing.assert_close(got.sample, ref.sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)


def test_dit_pipeline_samples_with_the_onnxruntime_backend_like_eager():
    transformer, _ = zoo.dit(grid=(4, 4))
    pipe = zoo.dit_pipeline(transformer)

    def run():   # DiTPipeline reads `.sample` of the transformer's output
        return pipe(class_labels=[1, 2], num_inference_steps=3, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images

    pipe.transformer = compile_with_reduction(transformer, "uniform-50")
    ref = run()
    pipe.transformer = compile_with_reduction(transformer, "uniform-50", backend="onnxruntime")
    got = run()
    assert got.shape == ref.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(got, ref, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["inductor", "aotinductor"])
def test_compiled_backends_return_the_output_type_of_the_wrapped_model(backend):
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    model, kw = zoo.dit(grid=(4, 4))
    eager = compile_with_reduction(model, "uniform-50")
    compiled = compile_with_reduction(model, "uniform-50", backend=backend)
    with torch.no_grad():
        ref = eager(**kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = compiled(**kw)   # export + compile on the first call
    assert type(got) is Transformer2DModelOutput
    torch.testing.assert_close(got.sample, ref.sample, rtol=1e-4, atol=1e-4)
    assert [str(w.message) for w in caught if any(n in str(w.message) for n in NOISE)] == []


# --- 2. the loaders from ditreduce.backends, their engines imported on first use -------------------------
def test_loaders_are_importable_from_backends_without_importing_onnxruntime_or_tensorrt():
    code = ("import sys; import ditreduce.backends as b; "
            "assert 'ditreduce.backends.onnxruntime' not in sys.modules and 'onnx' not in sys.modules; "
            "from ditreduce.backends import load_onnx, load_tensorrt; "
            "from ditreduce.backends.onnxruntime import load_onnx as o; "
            "from ditreduce.backends.tensorrt import load_tensorrt as t; "
            "assert load_onnx is o and load_tensorrt is t and {'load_onnx', 'load_tensorrt'} <= set(dir(b)); "
            "print(sorted(m for m in ('onnxruntime', 'tensorrt') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"   # neither engine is imported until a session / engine is made
    import ditreduce.backends

    with pytest.raises(AttributeError, match="load_nothing"):
        ditreduce.backends.load_nothing   # noqa: B018


# --- 3. `ditreduce export MODEL SCHEDULE DIR/` prints clean paths --------------------------------------
def test_export_command_prints_clean_paths_for_a_folder_with_a_trailing_slash(tmp_path, capsys):
    from ditreduce.cli import main

    out = str(tmp_path / "out") + "/"
    assert main(["export", TINY_DIT, "uniform-50", out, "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out' / 'manifest.json'}: 1 variants" in printed
    assert f"weights {tmp_path / 'out' / 'weights.bin'} " in printed
    assert "//" not in printed


# --- 4. a plain export prints nothing from torch / the ONNX exporter -----------------------------------
class _Records(logging.Handler):
    """Every log record at WARNING and above (CI runs pytest with -p no:logging: no caplog)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_a_plain_export_prints_no_dependency_noise(tmp_path, capfd):
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, "uniform-50")
    records, root = _Records(), logging.getLogger()
    root.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")   # as a plain run shows them (the test session hides FutureWarnings)
            with torch.no_grad():
                manifest = reduced.export(tmp_path, num_steps=2, **dict(kw, return_dict=False))
    finally:
        root.removeHandler(records)
    assert len(manifest.variants) == 1
    shown = capfd.readouterr().err + "\n".join(records.lines) + "\n".join(str(w.message) for w in caught)
    assert [n for n in NOISE if n in shown] == [], shown


def test_the_export_quiets_only_its_own_notices():
    from ditreduce.backends.onnx_graph import quiet_onnx_exporter

    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    with warnings.catch_warnings(record=True) as caught, quiet_onnx_exporter():
        warnings.simplefilter("always")
        warnings.warn("a model's own warning", UserWarning)
        assert not registry.filter(logging.LogRecord(registry.name, logging.WARNING, "", 0,
                                                     "torchvision is not installed. Skipping %s", ("x",), None))
        assert registry.filter(logging.LogRecord(registry.name, logging.WARNING, "", 0, "another notice", (), None))
    assert [str(w.message) for w in caught] == ["a model's own warning"]
    assert registry.filters == []   # the filter is gone after the export


# --- 5. an output folder that cannot be written is a named error --------------------------------------
@pytest.mark.parametrize("folder, why", [
    ("/proc/ditreduce-out", "No such file or directory"),
    ("{file}/out", "{file}' is a file, not a folder"),
    ("{file}", "{file}' is a file, not a folder"),
])
def test_export_into_a_folder_that_cannot_be_written_is_a_named_error(tmp_path, folder, why):
    file = tmp_path / "a-file"
    file.write_text("")
    folder, why = folder.format(file=file), why.format(file=file)
    model, kw = zoo.pixart()
    reduced = compile_with_reduction(model, "uniform-50")
    with pytest.raises(BackendError, match="export: cannot create the output folder") as e:
        reduced.export(folder, num_steps=2, **kw)
    assert f"'{folder}'" in str(e.value) and why in str(e.value)
    assert reduced.captures == {}   # refused before the model was captured


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_export_into_a_read_only_folder_is_a_named_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    model, kw = zoo.pixart()
    with pytest.raises(BackendError, match="is not writable"):
        compile_with_reduction(model, "uniform-50").export(ro, num_steps=2, **kw)
