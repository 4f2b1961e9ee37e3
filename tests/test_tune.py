"""`ditreduce tune`: the schedule it writes meets the quality target on the calibration seeds, is the largest
ratio on the grid that does (bisection), and an unreachable target is a TuneError naming what was tried."""
import pytest
import torch
import yaml

from ditreduce.model_specs import resolve_model
from ditreduce.bench.quality import compare, draw
from ditreduce.calibration.tune import Candidate, TuneError, TuneSettings, Tuner, ratio_grid, tune
from ditreduce.cli import main
from ditreduce.schedules import load_schedule

SETTINGS = dict(methods=["uniform"], scopes=["attention"], steps=2, seeds=1, repeats=1, minutes=10.0)


@pytest.fixture(scope="module")
def model():
    return resolve_model("small-dit:16")


def test_ratio_grid_is_the_schedule_grid_up_to_the_method_limit():
    assert ratio_grid(0.75)[0] == 0.05 and ratio_grid(0.75)[-1] == 0.75 and len(ratio_grid(0.75)) == 15


def test_bisection_ends_on_a_ratio_that_meets_the_target_next_to_one_that_does_not(model):
    tuner = Tuner(model, TuneSettings(min_psnr=0.0, **SETTINGS), log=lambda *_: None)
    target = tuner.quality(Candidate("uniform", "attention", 0.3, 0.2)).median_psnr
    tuner.settings.min_psnr = target
    best = tuner.largest_ratio("uniform", "attention")
    assert best.median_psnr >= target
    grid = ratio_grid(0.95)
    nxt = grid.index(best.candidate.ratio) + 1
    if nxt < len(grid):
        assert tuner.quality(Candidate("uniform", "attention", grid[nxt], 0.2)).median_psnr < target


def test_tune_writes_a_schedule_that_meets_the_target(model, tmp_path, capsys):
    out = tmp_path / "tuned.yaml"
    rc = main(["tune", "small-dit:16", "--min-psnr", "15", "--methods", "uniform", "--scopes", "attention",
               "--steps", "2", "--seeds", "1", "--repeats", "1", "-o", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "# measured: median PSNR" in text and "run speedup" in text
    doc = yaml.safe_load(text)
    sched = load_schedule(doc)
    assert sched.method == "uniform" and sched.num_steps == 2
    # the schedule as written reproduces the quality the header states, on the same calibration seeds
    tuner = Tuner(model, TuneSettings(min_psnr=15.0, **SETTINGS), log=lambda *_: None)
    from ditreduce import compile_with_reduction

    images = draw(model.small_dit, tuner.setup, transformer=compile_with_reduction(model.module, doc)).images
    psnr = compare(images, tuner.dense)[0][0]
    stated = float(text.split("# measured: median PSNR ")[1].split(" dB")[0])
    assert psnr == pytest.approx(stated, abs=0.01) and psnr >= 15.0


def test_an_unreachable_target_is_a_tune_error_naming_the_trials(model):
    with pytest.raises(TuneError, match=r"--min-psnr 200.*uniform attention r=0\.05"):
        tune(model, TuneSettings(min_psnr=200.0, **SETTINGS), log=lambda *_: None)


def test_a_model_that_cannot_sample_is_a_tune_error():
    bm = resolve_model("pixart-alpha:64:1")
    with pytest.raises(TuneError, match="small-dit"):
        Tuner(bm, TuneSettings(min_psnr=20.0, **SETTINGS))
    assert torch.is_tensor(bm.kwargs["hidden_states"])
