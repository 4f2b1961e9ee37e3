"""A real diffusers pipeline (tiny random components) runs end to end with the reduced transformer."""
import numpy as np
import torch

import zoo
from ditreduce import compile_with_reduction


def _pipe():
    return zoo.dit_pipeline(zoo.dit(grid=(4, 4))[0])


def _run(pipe):
    return pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


def test_dit_pipeline_ratio_zero_matches_dense_and_ratio_half_runs():
    pipe = _pipe()
    dense = _run(pipe)
    original = pipe.transformer
    pipe.transformer = compile_with_reduction(original, "identity")
    same = _run(pipe)
    np.testing.assert_allclose(same, dense, rtol=0, atol=1e-6)
    # four denoising steps counted from the timesteps, two calls (batched CFG: one) per step
    assert [c.step for c in pipe.transformer.generations.last.history] == [0, 1, 2, 3]
    pipe.transformer = compile_with_reduction(original, "uniform-50")
    red = _run(pipe)
    assert red.shape == dense.shape and np.isfinite(red).all() and not np.allclose(red, dense)
