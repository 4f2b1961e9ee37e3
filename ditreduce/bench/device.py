"""Where the bench runs a model: device and dtype of the module and its call's inputs."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KEEP_FP32 = ("timestep",)   # pipelines pass timesteps as the scheduler makes them (fp32), the rest in the model's dtype


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def place(bm, device: str, dtype: str):
    """The model and its call on `device` in `dtype` (timesteps stay fp32, integer inputs keep theirs)."""
    if device == "cpu" and dtype == "fp32":
        return bm
    bm.module.to(device=device, dtype=torch_dtype(dtype))
    bm.kwargs = to_device(bm.kwargs, device, dtype)
    bm.info = dict(bm.info, device=device, dtype=str(torch_dtype(dtype)).removeprefix("torch."))
    return bm


def to_device(kwargs: dict, device: str, dtype: str) -> dict:
    dt = torch_dtype(dtype)

    def move(name, v):
        if not isinstance(v, torch.Tensor):
            return v
        if v.is_floating_point() and name not in KEEP_FP32:
            return v.to(device=device, dtype=dt)
        return v.to(device=device)
    return {k: move(k, v) for k, v in kwargs.items()}
