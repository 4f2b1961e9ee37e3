"""Exported artefacts are verified: a manifest whose files lie outside its folder, whose graphs / weights /
plan do not match their sha256, whose steps name no variant, or that is truncated or malformed loads only
as a BackendError naming the file and field (hypothesis over mutations of one real export): the field the
mutation corrupted, or `plan_sha256` where the plan hash (not recomputed by the mutation) is what catches it."""
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from ditreduce import compile_with_reduction
from ditreduce.backends import BackendError
from ditreduce.backends.manifest import load_engine_manifest, load_manifest, manifest_file
from ditreduce.cli import main

SCHED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 1}, "method": "none"}]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, kw = zoo.dit()
    out = tmp_path_factory.mktemp("export")
    with torch.no_grad():
        compile_with_reduction(model, SCHED).export(out, num_steps=3, **dict(kw, return_dict=False))
    return out


def _copy(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(src, dst)
    return dst


def test_an_export_verifies_and_records_every_hash(exported):
    m = load_manifest(exported / "manifest.json")
    assert len(m.variants) == 2 and all(len(v.sha256) == 64 for v in m.variants)
    assert len(m.weights.sha256) == 64 and m.plan_sha256 == m.plan_hash()


BAD_PATHS = ["../../elsewhere/x.onnx", "/etc/hostname", "..", "", ".", "sub/../../v0.onnx", "../run/v0.onnx/.."]


def _set_path(doc, where, value):
    if where == "weights":
        doc["weights"]["path"] = value
    else:
        doc["variants"][where]["onnx"] = value


def _edit(root: Path, fn, rehash: bool = False):
    p = root / "manifest.json"
    doc = json.loads(p.read_text())
    fn(doc)
    if rehash:  # a forger who recomputes the plan hash: the structure / path checks must still hold
        from ditreduce.backends.manifest import Manifest

        doc["plan_sha256"] = None
        try:
            doc["plan_sha256"] = Manifest.model_validate(doc).plan_hash()
        except Exception:  # noqa: BLE001 — not even a manifest: the loader will say so
            pass
    p.write_text(json.dumps(doc))


def _mutations():
    where = st.sampled_from([0, 1, "weights"])
    return st.one_of(
        st.tuples(st.just("path"), where, st.sampled_from(BAD_PATHS), st.booleans()),
        st.tuples(st.just("hash"), where, st.sampled_from(["0" * 64, "", None, "zz"]), st.booleans()),
        st.tuples(st.just("plan_hash"), st.just(0), st.sampled_from(["0" * 64, None]), st.just(False)),
        st.tuples(st.just("shape"), st.integers(0, 1), st.integers(-5, 5).filter(bool), st.booleans()),
        st.tuples(st.just("truncate"), st.just(0), st.floats(0.0, 0.99), st.just(False)),
        st.tuples(st.just("swap"), st.just(0), st.none(), st.just(False)),
        st.tuples(st.just("zero_weights"), st.just(0), st.none(), st.just(False)),
        st.tuples(st.just("steps"), st.integers(0, 2), st.sampled_from([-1, -7, 2, 99, 2**40]), st.booleans()),
        st.tuples(st.just("drop"), st.sampled_from(["steps", "variants", "weights", "num_steps", "opset"]),
                  st.none(), st.booleans()),
        st.tuples(st.just("drop_in_variant"), st.sampled_from(["onnx", "inputs", "outputs", "plan", "name"]),
                  st.none(), st.booleans()),
        st.tuples(st.just("retype"), st.sampled_from(["steps", "num_steps", "variants", "weights"]),
                  st.sampled_from(["x", 1.5, None, [], {}]), st.booleans()),
        st.tuples(st.just("dtype"), st.just(0), st.sampled_from(["float33", "Tensor", "__class__"]), st.booleans()),
        st.tuples(st.just("binary"), st.just(0), st.binary(min_size=1, max_size=64), st.just(False)),
    )


def _apply(root: Path, mutation) -> bool:
    """Mutate the copy at root; True if the mutation must be refused even with verify=False."""
    kind, where, value, rehash = mutation
    if kind == "path":
        _edit(root, lambda d: _set_path(d, where, value), rehash)
        return True
    if kind == "hash":
        _edit(root, lambda d: (d["weights"] if where == "weights" else d["variants"][where]).__setitem__("sha256", value),
              rehash)
    elif kind == "plan_hash":
        _edit(root, lambda d: d.__setitem__("plan_sha256", value))
    elif kind == "shape":
        def shape(d):
            spec = d["variants"][where]["inputs"][0]
            spec["shape"][0] += value
        _edit(root, shape, rehash)
        return json.loads((root / "manifest.json").read_text())["variants"][where]["inputs"][0]["shape"][0] < 0
    elif kind == "truncate":
        text = (root / "manifest.json").read_bytes()
        (root / "manifest.json").write_bytes(text[:int(len(text) * value)])
        return True
    elif kind == "swap":
        a, b = (root / "v0.onnx").read_bytes(), (root / "v1.onnx").read_bytes()
        (root / "v0.onnx").write_bytes(b)
        (root / "v1.onnx").write_bytes(a)
    elif kind == "zero_weights":
        w = root / "weights.bin"
        w.write_bytes(bytes(w.stat().st_size))
    elif kind == "steps":
        _edit(root, lambda d: d["steps"].__setitem__(where, value), rehash)
        return True
    elif kind == "drop":
        _edit(root, lambda d: d.pop(where), rehash)
        return True
    elif kind == "drop_in_variant":
        _edit(root, lambda d: d["variants"][1].pop(where), rehash)
        return True
    elif kind == "retype":
        _edit(root, lambda d: d.__setitem__(where, value), rehash)
        return True
    elif kind == "dtype":
        _edit(root, lambda d: d["variants"][0]["inputs"][0].__setitem__("dtype", value), rehash)
        return True
    elif kind == "binary":
        (root / "manifest.json").write_bytes(b"\xff" + value)
        return True
    return False


def _fields(mutation, structural: bool) -> tuple[str, str | None]:
    """(the field a verified load names, the field a load with verify=False names; None: it loads). A JSON edit
    that leaves the plan hash as exported is caught by the hash first (`plan_sha256`) where the document still
    validates; the structure and the paths are checked without the hashes too. A document that is not JSON has
    no field: its error says so."""
    kind, where, value, rehash = mutation
    if kind in ("truncate", "binary"):
        return "not valid JSON", "not valid JSON"
    file = "weights.path" if where == "weights" else f"variants[{where}].onnx"
    field = {"path": file, "hash": file, "plan_hash": "plan_sha256", "swap": "variants[0].onnx",
             "zero_weights": "weights.path", "steps": f"steps[{where}]", "drop": where,
             "drop_in_variant": f"variants[1].{where}", "retype": where, "dtype": "variants[0].inputs[0].dtype",
             "shape": f"variants[{where}].inputs[0]" + (".shape[0]" if structural else "")}[kind]
    if structural and kind not in ("path",):     # invalid before any hash is read: named alike either way
        return field, field
    edited_json = kind in ("path", "hash", "shape")
    return ("plan_sha256" if edited_json and not rehash else field), (field if structural else None)


def _names(message: str, field: str) -> bool:
    """`field` appears in the message as a field (`steps[0]:`, `weights.path:`, `weights.bytes` under `weights`)."""
    if field == "not valid JSON":
        return field in message
    return re.search(r"(^|[\s:])" + re.escape(field) + r"[:.\[]", message) is not None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=_mutations())
def test_every_mutated_manifest_is_a_backend_error(exported, mutation):
    root = _copy(exported)
    try:
        structural = _apply(root, mutation)
        verified, unverified = _fields(mutation, structural)
        with pytest.raises(BackendError) as e:
            load_manifest(root / "manifest.json")
        assert str(root) in str(e.value) or "manifest's folder" in str(e.value), e.value
        assert _names(str(e.value), verified), (verified, str(e.value))
        if structural:
            with pytest.raises(BackendError) as e:
                load_manifest(root / "manifest.json", verify=False)
            assert _names(str(e.value), unverified), (unverified, str(e.value))
        else:
            load_manifest(root / "manifest.json", verify=False)  # only the hashes catch it
    finally:
        shutil.rmtree(root.parent)


@pytest.mark.parametrize("rel", BAD_PATHS)
def test_manifest_file_refuses_paths_out_of_the_folder(tmp_path, rel):
    with pytest.raises(BackendError, match="is not a file inside the manifest's folder"):
        manifest_file(tmp_path, rel, "variants[0].onnx")
    assert manifest_file(tmp_path, "v0.onnx") == (tmp_path / "v0.onnx").resolve()


def test_engine_manifest_paths_are_checked(tmp_path, exported):
    root = _copy(exported)
    try:
        eng = root / "engines"
        eng.mkdir()
        (eng / "v0.plan").write_bytes(b"plan")
        doc = {"onnx_manifest": "../manifest.json", "precision": "fp16", "refittable": False, "weight_stripped": False,
               "tensorrt_version": "10", "engines": [{"variant": "v0", "plan": "v0.plan", "profile": {}}]}
        (eng / "engines.json").write_text(json.dumps(doc))
        assert load_engine_manifest(eng / "engines.json").engines[0].plan == "v0.plan"
        for field, bad in (("onnx_manifest", "../../elsewhere/manifest.json"), ("plan", "../weights.bin"),
                           ("sha256", "0" * 64), ("plan", "/etc/hostname")):
            d = json.loads(json.dumps(doc))
            (d if field == "onnx_manifest" else d["engines"][0])[field] = bad
            (eng / "engines.json").write_text(json.dumps(d))
            with pytest.raises(BackendError, match=field.replace("sha256", "plan")):
                load_engine_manifest(eng / "engines.json")
    finally:
        shutil.rmtree(root.parent)


def test_check_tensorrt_verifies_and_no_verify_skips_only_the_hashes(exported, capsys):
    root = _copy(exported)
    try:
        w = root / "weights.bin"
        w.write_bytes(bytes(w.stat().st_size))
        assert main(["check-tensorrt", str(root / "manifest.json")]) == 2
        err = capsys.readouterr().err
        assert "ditreduce: error: BackendError:" in err and "weights.path: 'weights.bin' does not match its sha256" in err
        assert main(["check-tensorrt", "--no-verify", str(root / "manifest.json")]) == 0
    finally:
        shutil.rmtree(root.parent)
