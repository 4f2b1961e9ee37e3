"""One external-data weights file shared by every variant graph.

Each initializer of at least `min_bytes` is written once per distinct content (dtype, dims, bytes) —
a parameter that every variant uses (whatever name the exporter gave it) is stored once — and each
graph's initializer points into the file with (location, offset, length). Smaller tensors (scalars,
shape constants) stay inside the graphs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import set_external_data

ALIGN, BIG = 4096, 1 << 20  # page-align tensors of 1 MiB and more (mmap), 64 bytes otherwise


def _raw(t: onnx.TensorProto) -> bytes:
    return t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t)).raw_data


def share_weights(models: dict[str, onnx.ModelProto], weights_path: Path, min_bytes: int = 1024) -> tuple[int, int]:
    """Move the initializers of every model into `weights_path` (in place); returns (bytes, tensors) written."""
    offsets: dict[str, tuple[int, int]] = {}
    with open(weights_path, "wb") as f:
        for model in models.values():
            for t in model.graph.initializer:
                raw = _raw(t)
                if len(raw) < min_bytes:
                    continue
                digest = hashlib.sha256(raw + bytes(str((t.data_type, list(t.dims))), "ascii")).hexdigest()
                if digest not in offsets:
                    pad = -f.tell() % (ALIGN if len(raw) >= BIG else 64)
                    f.write(b"\0" * pad)
                    offsets[digest] = (f.tell(), len(raw))
                    f.write(raw)
                offset, length = offsets[digest]
                ext = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims), raw_data=raw)
                set_external_data(ext, weights_path.name, offset, length)
                ext.ClearField("raw_data")
                t.CopyFrom(ext)
        size = f.tell()
    return size, len(offsets)
