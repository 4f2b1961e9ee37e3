"""The small PixArt-shaped DiT trained here (tools/train_small_dit.py) and shipped with the package."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import CLASS_NAMES, NULL_CLASS, NUM_CLASSES

SMALL_DIT_DIR = Path(__file__).parent / "small_dit"

# diffusers PixArtTransformer2DModel config: pixel space, 3 channels, patch 2.
# 64x64 pixels -> 32x32 = 1024 image tokens; trained on 32x32 and 64x64 renders of the same scenes.
SMALL_DIT_CONFIG = dict(
    sample_size=64, patch_size=2, in_channels=3, out_channels=3,
    num_layers=8, num_attention_heads=4, attention_head_dim=32,
    cross_attention_dim=128, caption_channels=64, norm_type="ada_norm_single",
    norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000,
    use_additional_conditions=False, attention_bias=True, activation_fn="gelu-approximate",
    interpolation_scale=1, dropout=0.0,
)
CAPTION_TOKENS = 4


class CaptionTable(nn.Module):
    """Each class (and the null class for CFG) is a learned sequence of caption embeddings."""

    def __init__(self, num_rows: int = NUM_CLASSES + 1, tokens: int = CAPTION_TOKENS, channels: int = 64):
        super().__init__()
        self.tokens, self.channels = tokens, channels
        self.table = nn.Parameter(torch.randn(num_rows, tokens, channels) * 0.5)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table[labels]


@dataclass
class SmallDiT:
    transformer: nn.Module
    captions: CaptionTable
    class_names: tuple[str, ...] = CLASS_NAMES
    null_class: int = NULL_CLASS

    def eval(self) -> "SmallDiT":
        self.transformer.eval()
        self.captions.eval()
        return self


def new_small_dit(config: dict | None = None) -> SmallDiT:
    from diffusers import PixArtTransformer2DModel

    cfg = dict(SMALL_DIT_CONFIG, **(config or {}))
    return SmallDiT(PixArtTransformer2DModel(**cfg), CaptionTable(channels=cfg["caption_channels"]))


def save_small_dit(model: SmallDiT, path: str | Path, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    model.transformer.save_pretrained(path)
    save_file({"table": model.captions.table.detach().contiguous()}, str(path / "captions.safetensors"))
    (path / "training.json").write_text(json.dumps(meta or {}, indent=1))


def load_small_dit(path: str | Path | None = None) -> SmallDiT:
    """Load the shipped model offline with diffusers' `from_pretrained` from the package directory."""
    from diffusers import PixArtTransformer2DModel
    from safetensors.torch import load_file

    path = Path(path) if path is not None else SMALL_DIT_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no small DiT at {path}: run tools/train_small_dit.py to create it")
    # low_cpu_mem_usage=False: a 2.3M-parameter model gains nothing from it, and asking for it (diffusers'
    # default) without `accelerate` installed prints an "install accelerate" notice on every load
    transformer = PixArtTransformer2DModel.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    table = load_file(str(path / "captions.safetensors"))["table"]
    captions = CaptionTable(table.shape[0], table.shape[1], table.shape[2])
    captions.table.data.copy_(table)
    return SmallDiT(transformer, captions).eval()
