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

SETTINGS = dict(methods=["uniform"], scopes=["attention"], steps=2, seeds=1, repeats=1, minutes=10.0,
                prop_attn=(False,))


@pytest.fixture(scope="module")
def model():
    return resolve_model("small-dit:16")


def test_ratio_grid_is_the_schedule_grid_up_to_the_method_limit():
    assert ratio_grid(0.75)[0] == 0.05 and ratio_grid(0.75)[-1] == 0.75 and len(ratio_grid(0.75)) == 15


@pytest.mark.parametrize("margin", [0.0, 2.0])
def test_bisection_ends_on_a_ratio_that_meets_the_target_next_to_one_that_does_not(model, margin):
    tuner = Tuner(model, TuneSettings(min_psnr=0.0, margin=margin, **SETTINGS), log=lambda *_: None)
    at_03 = tuner.quality(Candidate("uniform", "attention", 0.3, 0.2)).median_psnr
    tuner.settings.min_psnr = at_03 - margin   # with the margin, exactly r = 0.3's PSNR is needed
    best = tuner.largest_ratio("uniform", "attention")
    assert best.median_psnr >= at_03 and best.candidate.ratio >= 0.3
    grid = ratio_grid(0.95)
    nxt = grid.index(best.candidate.ratio) + 1
    if nxt < len(grid):
        assert tuner.quality(Candidate("uniform", "attention", grid[nxt], 0.2)).median_psnr < at_03


def scale_measured_speedups(monkeypatch, factor: float) -> None:
    """Run tune's real interleaved timing, then scale every measured run speedup by `factor`: at 64 image
    tokens and 2 steps the real figure is noise around 1x, and these tests are about what tune does with it."""
    timed = Tuner.time_trials

    def time_then_scale(self, trials):
        timed(self, trials)
        for t in trials:
            assert t.run_speedups and all(x > 0 for x in t.run_speedups)
            t.run_speedups = [x * factor for x in t.run_speedups]
            t.run_speedup *= factor

    monkeypatch.setattr(Tuner, "time_trials", time_then_scale)


def test_tune_writes_a_schedule_that_meets_the_target(model, tmp_path, capsys, monkeypatch):
    scale_measured_speedups(monkeypatch, 100.0)   # faster than dense, whatever the machine measures
    out = tmp_path / "tuned.yaml"
    rc = main(["tune", "small-dit:16", "--min-psnr", "15", "--methods", "uniform", "--scopes", "attention",
               "--steps", "2", "--seeds", "1", "--repeats", "1", "--prop-attn", "on", "-o", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "# measured: median PSNR" in text and "run speedup" in text and "over 1 repeats]" in text
    doc = yaml.safe_load(text)
    sched = load_schedule(doc)
    assert sched.method == "uniform" and sched.num_steps == 2 and doc["prop_attn"] is True
    # the schedule as written reproduces the quality the header states, on the same calibration seeds
    tuner = Tuner(model, TuneSettings(min_psnr=15.0, **SETTINGS), log=lambda *_: None)
    from ditreduce import compile_with_reduction

    images = draw(model.small_dit, tuner.setup, transformer=compile_with_reduction(model.module, doc)).images
    psnr = compare(images, tuner.dense)[0][0]
    stated = float(text.split("# measured: median PSNR ")[1].split(" dB")[0])
    assert psnr == pytest.approx(stated, abs=0.01) and psnr >= 15.0


def test_a_target_only_slower_than_dense_schedules_meet_writes_nothing(model, tmp_path, monkeypatch, capsys):
    """A schedule measured slower than dense is never called best: a TuneError (exit 2, one line) that says
    the target cannot pay at this size, and no file."""
    scale_measured_speedups(monkeypatch, 1e-3)   # every candidate far slower than dense
    with pytest.raises(TuneError, match=r"cannot pay on small-dit:16 at 64 image tokens: .* runs at 0\.\d\dx of "
                                        r"dense, no faster than the dense model; nothing written"):
        tune(model, TuneSettings(min_psnr=15.0, **SETTINGS), log=lambda *_: None)
    out = tmp_path / "tuned.yaml"
    rc = main(["tune", "small-dit:16", "--min-psnr", "15", "--methods", "uniform", "--scopes", "attention",
               "--steps", "2", "--seeds", "1", "--repeats", "1", "--prop-attn", "off", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert len(err) == 1
    assert err[0].startswith("ditreduce: error: TuneError: --min-psnr 15 (+ --margin-db 1) cannot pay on small-dit:16")


def test_proportional_attention_is_a_searched_dimension_that_reaches_the_model(model, monkeypatch):
    """The same candidate with and without prop_attn samples differently (the flag reaches the schedule the
    sampler runs), and the search runs one bisection per setting."""
    tuner = Tuner(model, TuneSettings(min_psnr=0.0, **dict(SETTINGS, methods=["coredit"])), log=lambda *_: None)
    off, on = (tuner.quality(Candidate("coredit", "attention", 0.5, 0.2, prop_attn=p)).median_psnr
               for p in (False, True))
    assert abs(on - off) > 0.01
    assert Candidate("coredit", "attention", 0.5, 0.2, prop_attn=True).schedule()["prop_attn"] is True
    calls = []
    monkeypatch.setattr(tuner, "largest_ratio", lambda m, s, p: calls.append((m, s, p)))  # finds nothing
    monkeypatch.setattr("ditreduce.calibration.tune.Tuner", lambda *a, **k: tuner)
    with pytest.raises(TuneError):
        tune(model, TuneSettings(min_psnr=0.0, **dict(SETTINGS, methods=["coredit"], prop_attn=(False, True))))
    assert calls == [("coredit", "attention", False), ("coredit", "attention", True)]


def test_an_unreachable_target_is_a_tune_error_naming_the_trials(model):
    with pytest.raises(TuneError, match=r"--min-psnr 200.*uniform attention r=0\.05"):
        tune(model, TuneSettings(min_psnr=200.0, **SETTINGS), log=lambda *_: None)


def test_the_margin_alone_can_make_a_target_unreachable(model, monkeypatch):
    """A target that r = 0.05 meets on the calibration seeds fails once the margin puts it out of reach."""
    scale_measured_speedups(monkeypatch, 100.0)   # the first search succeeds, whatever the machine measures
    tuner = Tuner(model, TuneSettings(min_psnr=0.0, **SETTINGS), log=lambda *_: None)
    best = tuner.quality(Candidate("uniform", "attention", 0.05, 0.2)).median_psnr
    tune(model, TuneSettings(min_psnr=best - 0.5, margin=0.0, **SETTINGS), log=lambda *_: None)
    with pytest.raises(TuneError, match=r"--margin-db 1"):
        tune(model, TuneSettings(min_psnr=best - 0.5, margin=1.0, **SETTINGS), log=lambda *_: None)


def test_a_budget_spent_before_any_configuration_is_a_tune_error_saying_so(model, monkeypatch):
    monkeypatch.setattr(Tuner, "out_of_time", lambda self: True)
    with pytest.raises(TuneError, match=r"--minutes 10 ran out before the first configuration was measured "
                                        r"\(setting up and sampling dense took \d+ s\); raise --minutes"):
        tune(model, TuneSettings(min_psnr=15.0, **SETTINGS), log=lambda *_: None)


def test_a_model_that_cannot_sample_is_a_tune_error():
    bm = resolve_model("pixart-alpha:64:1")
    with pytest.raises(TuneError, match="small-dit"):
        Tuner(bm, TuneSettings(min_psnr=20.0, **SETTINGS))
    assert torch.is_tensor(bm.kwargs["hidden_states"])
