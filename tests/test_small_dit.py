"""The shipped small DiT: offline load, deterministic sampling, metrics, training smoke run, demo."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ditreduce.smalldit.data import NUM_CLASSES, batch
from ditreduce.smalldit.metrics import psnr, spectrum_slope, ssim, total_variation
from ditreduce.smalldit.models import SMALL_DIT_DIR, load_small_dit, new_small_dit
from ditreduce.smalldit.sampling import sample

ROOT = Path(__file__).resolve().parents[1]


def _train_module():
    spec = importlib.util.spec_from_file_location("train_small_dit", ROOT / "tools" / "train_small_dit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def model():
    return load_small_dit()


def test_loads_offline_from_the_package(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = load_small_dit()
    assert (SMALL_DIT_DIR / "diffusion_pytorch_model.safetensors").stat().st_size < 25e6
    cfg = m.transformer.config
    assert (64 // cfg.patch_size) ** 2 >= 1024
    assert m.captions.table.shape[0] == NUM_CLASSES + 1
    for a, b in zip(m.transformer.parameters(), model.transformer.parameters()):
        assert torch.equal(a, b)


def test_same_seed_same_sample(model):
    a = sample(model, [0, 3], [7, 8], steps=2)
    b = sample(model, [0, 3], [7, 8], steps=2)
    c = sample(model, [3], [8], steps=2)
    assert torch.equal(a, b)
    torch.testing.assert_close(a[1:], c, rtol=1e-4, atol=1e-4)  # a sample depends on its own seed only
    assert not torch.allclose(a[0], sample(model, [0], [9], steps=2)[0])


def test_psnr_ssim_reference_values():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(3, 64, 64)  # mid-grey: noise does not clip
    assert psnr(img, img) == math.inf and ssim(img, img) == pytest.approx(1.0)
    for sigma in (0.01, 0.05):  # in [0, 1] units; images live in [-1, 1]
        noisy = img + 2 * sigma * torch.randn(img.shape, generator=g)
        assert psnr(noisy, img) == pytest.approx(-10 * math.log10(sigma ** 2), abs=0.15)
    assert ssim(img + 0.1 * torch.randn(img.shape, generator=g), img) < 0.5


def test_model_is_trained_heldout_loss_far_below_untrained(model):
    train = _train_module()
    torch.manual_seed(0)
    untrained = new_small_dit()
    trained = train.heldout_loss(model, 32, n=16)
    base = train.heldout_loss(untrained, 32, n=16)
    assert trained < 0.35 * base, (trained, base)


def test_samples_look_like_the_data_not_noise(model):
    imgs = sample(model, [0, 3], [1, 2], steps=10)
    data, _ = batch(8, 64, torch.Generator().manual_seed(5))
    noise = torch.randn(3, 64, 64).clamp(-1, 1)
    tv_s = np.mean([total_variation(x) for x in imgs])
    tv_d, tv_n = np.mean([total_variation(x) for x in data]), total_variation(noise)
    sl_s = np.mean([spectrum_slope(x) for x in imgs])
    sl_d, sl_n = np.mean([spectrum_slope(x) for x in data]), spectrum_slope(noise)
    assert abs(tv_s - tv_d) < abs(tv_s - tv_n)
    assert abs(sl_s - sl_d) < abs(sl_s - sl_n)


def test_training_script_smoke_and_resume(tmp_path):
    train = _train_module()
    tiny = json.dumps({"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 8,
                       "cross_attention_dim": 16, "caption_channels": 8})
    args = ["--steps", "2", "--batch", "4", "--hires-frac", "0.5", "--workdir", str(tmp_path / "w"),
            "--out", str(tmp_path / "out"), "--config", tiny, "--save-every", "1"]
    meta = train.main(args)
    assert meta["steps"] == 2 and set(meta["heldout_loss"]) == {"32", "64"}
    log = (tmp_path / "w" / "loss.csv").read_text().splitlines()
    assert log[0] == "step,res,loss,lr,seconds" and [r.split(",")[1] for r in log[1:]] == ["32", "64"]
    m = load_small_dit(tmp_path / "out")
    assert m.transformer.config.num_layers == 1
    meta2 = train.main(args[:1] + ["3"] + args[2:])  # resumes at step 2
    assert len((tmp_path / "w" / "loss.csv").read_text().splitlines()) == 1 + 3 and meta2["steps"] == 3


def test_demo_runs_end_to_end(tmp_path, capsys):
    from ditreduce.cli import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--samples", "1", "--steps", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "dito-default" in text and out.exists()  # --schedule auto: the best method
