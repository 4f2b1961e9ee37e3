"""`ditreduce bench`: outputs and schema, FLOP / memory counting, interleaved timing, matched ratios."""
import json
import statistics

import pytest
import torch
import torch.nn.functional as F

from ditreduce.bench import flops as bflops
from ditreduce.bench import memory, runner, speed
from ditreduce.bench.device import place
from ditreduce.bench.models import BenchModelError, resolve_model
from ditreduce.bench.results import BenchResults, pareto_figure, pareto_front, pareto_series
from ditreduce.cli import main

RESULT_KEYS = {"schema_version", "ditreduce_version", "created_utc", "command", "machine", "settings", "equal_flops",
               "matched", "models", "rows", "process_peak_rss_bytes"}
ROW_KEYS = {"model", "image_tokens", "blocks", "method", "scope", "backend", "nominal_ratio", "ratio", "schedule",
            "steps", "variants", "per_step_variant", "capture_s", "compile_s", "flops", "timing", "memory",
            "quality", "error", "config", "max_abs_diff_to_eager"}
THREADS_BEFORE = torch.get_num_threads()
TIMING_KEYS = {"dense_baseline", "dense_s", "reduced_s", "call_speedup", "run_speedup", "achieved_over_ideal",
               "repeats", "dense_times", "variant_times", "busiest_variant", "graph_speedup", "clock"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()  # --threads sets the process's thread count: restore it after
    try:
        assert main(["bench", "--quick", "--threads", "1", "--methods", "uniform,random", "--first-seed", "7",
                     "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_the_quick_bench_leaves_the_thread_count_as_it_found_it(quick):
    assert torch.get_num_threads() == THREADS_BEFORE


def test_quick_writes_every_output_with_the_versioned_schema(quick):
    for name in ("results.json", "results.md", "pareto.png", "grid.png"):
        assert (quick / name).stat().st_size > 0, name
    raw = json.loads((quick / "results.json").read_text())
    assert set(raw) == RESULT_KEYS and raw["schema_version"] == 1
    row = raw["rows"][0]
    assert set(row) == ROW_KEYS and set(row["timing"]) == TIMING_KEYS
    res = BenchResults.load(quick / "results.json")  # round-trips through the pydantic model
    r, r2 = res.rows
    assert r2.method == "random" and r2.error is None
    assert r.error is None and r.method == "uniform" and r.steps == 5 and r.model == "small-dit:32"
    # 5 steps, first 20 % dense: step 0 runs the dense variant, steps 1-4 the reduced one
    assert r.per_step_variant == [0, 1, 1, 1, 1] and r.variants == 2
    assert r.quality.seeds == [7, 8] and 0 < r.quality.ssim.median < 1
    assert len(r.quality.psnr_per_seed) == 2 and r.quality.psnr_db.min == min(r.quality.psnr_per_seed)
    assert 0 < r.flops.attention_ratio < r.flops.whole_ratio < 1
    md = (quick / "results.md").read_text()
    assert "| small-dit:32 | uniform | attention | eager | 0.5 |" in md


def test_speedups_are_computed_from_the_times_of_the_same_repeats(quick):
    r = BenchResults.load(quick / "results.json").rows[0]
    t = r.timing
    assert len(t.dense_times) == t.repeats == 2 and all(len(v) == 2 for v in t.variant_times)
    call = [d / x for d, x in zip(t.dense_times, t.variant_times[t.busiest_variant])]
    assert t.call_speedup.median == pytest.approx(statistics.median(call))
    run = [5 * d / sum(t.variant_times[v][i] for v in r.per_step_variant) for i, d in enumerate(t.dense_times)]
    assert t.run_speedup.median == pytest.approx(statistics.median(run))
    assert t.run_speedup.min == pytest.approx(min(run)) and t.run_speedup.max == pytest.approx(max(run))
    assert t.achieved_over_ideal == pytest.approx(t.run_speedup.median / r.flops.ideal_speedup)
    # the speed table states both ideals: per call (dense ÷ the busiest variant's FLOPs) and per run
    f = r.flops
    call_ideal = f.whole_dense / f.whole_reduced
    assert f.call_ideal_speedup == pytest.approx(call_ideal) and call_ideal > f.ideal_speedup  # step 0 dense
    md = (quick / "results.md").read_text()
    assert (f"| {call_ideal:.2f}× / {f.ideal_speedup:.2f}× | {t.call_speedup.median / call_ideal:.2f} / "
            f"{t.achieved_over_ideal:.2f} |") in md
    # the all-dense variant is the captured graph, timed once and shared; graph_speedup = dense / graph
    g = [d / x for d, x in zip(t.dense_times, t.variant_times[0])]
    assert t.graph_speedup.median == pytest.approx(statistics.median(g))


def test_every_configuration_is_timed_in_one_interleaved_loop(quick):
    """Both rows divide the same dense times (one loop per model and backend), and share the graph's."""
    r1, r2 = BenchResults.load(quick / "results.json").rows
    assert r1.timing.dense_times == r2.timing.dense_times
    assert r1.timing.variant_times[0] == r2.timing.variant_times[0]
    assert r1.timing.variant_times[1] != r2.timing.variant_times[1]


class _FakeClock:
    """perf_counter that advances only when a timed function 'runs' for its declared duration."""

    def __init__(self):
        self.now = 0.0
        self.log = []

    def work(self, name, seconds):
        def fn():
            self.log.append(name)
            self.now += seconds
        return fn


def test_interleaving_rotates_the_order_and_speedups_pair_the_same_repeat(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(speed.time, "perf_counter", lambda: clock.now)
    fns = {"dense": clock.work("dense", 2.0), "v0": clock.work("v0", 2.0), "v1": clock.work("v1", 0.5)}
    times = speed.interleaved_times(fns, repeats=3, warmup=1)
    assert clock.log == ["dense", "v0", "v1",            # warm-up
                         "dense", "v0", "v1", "v0", "v1", "dense", "v1", "dense", "v0"]
    assert times == {"dense": [2.0] * 3, "v0": [2.0] * 3, "v1": [0.5] * 3}
    assert speed.per_repeat_speedups(times["dense"], times["v1"]) == [4.0] * 3
    # a 4-step run: one dense-variant step then three reduced steps: 4·2 / (2 + 3·0.5)
    assert speed.run_speedups(times["dense"], [times["v0"], times["v1"]], [0, 1, 1, 1]) == [8 / 3.5] * 3


def test_pareto_plot_has_one_series_per_method(quick):
    res = BenchResults.load(quick / "results.json")
    base = res.rows[0]
    rows = []
    for method, psnr in (("uniform", 20.0), ("coredit", 30.0), ("tome", 25.0)):
        for ratio, sp in ((0.3, 1.0), (0.5, 1.5)):
            q = base.quality.model_copy(update={"psnr_db": base.quality.psnr_db.model_copy(
                update={"median": psnr - 10 * ratio})})
            t = base.timing.model_copy(update={"run_speedup": base.timing.run_speedup.model_copy(
                update={"median": sp, "min": sp - 0.25, "max": sp + 0.25})})
            rows.append(base.model_copy(update={"method": method, "ratio": ratio, "quality": q, "timing": t}))
    res = res.model_copy(update={"rows": rows})
    series = pareto_series(res)
    assert set(series) == {"uniform", "coredit", "tome"}
    assert series["coredit"] == [(1.0, 0.75, 1.25, 27.0), (1.5, 1.25, 1.75, 25.0)]
    fig = pareto_figure(res)
    lines = fig.axes[0].get_lines()
    assert sorted(ln.get_label() for ln in lines) == ["coredit", "tome", "uniform"]
    coredit = next(ln for ln in lines if ln.get_label() == "coredit")
    assert list(coredit.get_xdata()) == [1.0, 1.5] and list(coredit.get_ydata()) == [27.0, 25.0]
    # the fastest method at each PSNR target is starred and labelled (none reaches 30 dB)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["≥24 dB: coredit 1.50×", "≥27 dB: coredit 1.00×"]


def _plotted_results(quality: bool) -> BenchResults:
    """Results with three schedule files (long names: the bench names a --schedule row by the file) as the
    plot reads them; no bench run."""
    from ditreduce.bench.results import FlopsRecord, QualityRecord, Row, Stat, TimingRecord

    def stat(m):
        return Stat(median=m, min=m - 0.2, max=m + 0.2, n=3)

    rows = []
    for stem, psnr, speedup in (("dito-prop-0.65-once-blocks", 27.3, 1.55), ("dito-prop-0.4-once-blocks", 30.3, 1.43),
                                ("dito-prop-0.35-once-blocks", 31.0, 1.30)):
        rows.append(Row.model_construct(
            model="small-dit:64", method=stem, config=f"docs/{stem}.yaml", scope="attention+proj", backend="eager",
            ratio=0.5, error=None, flops=FlopsRecord.model_construct(ideal_speedup=1.6),
            timing=TimingRecord.model_construct(run_speedup=stat(speedup)),
            quality=QualityRecord.model_construct(psnr_db=stat(psnr)) if quality else None))
    return BenchResults.model_construct(rows=rows, settings={"backends": ["eager"]})


@pytest.mark.parametrize("quality, says", [(True, "small-dit:64, eager: PSNR vs run speedup"),
                                           (False, "small-dit:64, eager: FLOPs-ideal speedup (no quality measured) "
                                                   "vs run speedup")])
def test_the_pareto_title_says_what_the_plot_shows(quality, says):
    import matplotlib.pyplot as plt

    fig = pareto_figure(_plotted_results(quality))
    assert fig.axes[0].get_title() == says
    plt.close(fig)


def test_the_pareto_legend_is_beside_the_axes_and_the_png_holds_every_label(tmp_path):
    """With --schedule files the legend never covers the axes (points, y axis), and the written PNG is
    cropped to everything drawn: no label is cut off at its edge."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from ditreduce.bench.results import save_pareto

    res = _plotted_results(quality=True)
    fig = pareto_figure(res)
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 > box.x1   # right of the axes, not over them
    stars = [t.get_window_extent(renderer) for t in ax.texts]   # the labels of the fastest per target
    assert len(stars) == 2 and all(box.x0 <= s.x0 and s.x1 <= box.x1 for s in stars)
    drawn = fig.get_tightbbox(renderer)                     # inches: every artist, labels included
    plt.close(fig)
    save_pareto(res, tmp_path / "pareto.png")
    width, height = Image.open(tmp_path / "pareto.png").size
    assert width >= drawn.width * fig.dpi - 2 and height >= drawn.height * fig.dpi - 2
    assert drawn.width > fig.get_figwidth()                 # the legend beside the axes widens the image


def test_pareto_front_keeps_only_undominated_configurations():
    pts = [(1.0, 0, 0, 27.0), (1.2, 0, 0, 26.0), (1.1, 0, 0, 25.0), (1.5, 0, 0, 25.0), (1.4, 0, 0, 24.0)]
    assert pareto_front(pts) == [(1.0, 0, 0, 27.0), (1.2, 0, 0, 26.0), (1.5, 0, 0, 25.0)]


def test_flops_count_matmuls_and_cpu_sdpa():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    assert bflops.count_flops(lambda: lin(x)) == bflops.Flops(2 * 3 * 16 * 8, 0)
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    fl = bflops.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert fl.attention == fl.whole == 2 * (2 * 2 * 4 * 10 * 6 * 8)  # QKᵀ and PV


def test_probe_finds_the_exponent_and_matches_attention_flops(monkeypatch):
    from ditreduce.methods import METHODS
    from ditreduce.methods.uniform import Uniform

    kv = type("KVOnly", (Uniform,), {"name": "kvonly", "reduces_q": False})  # ToDo-like, only in this test
    monkeypatch.setitem(METHODS, "kvonly", kv)
    settings = runner.BenchSettings(methods=["uniform", "kvonly"], ratios=[0.3, 0.5], scopes=["attention"])
    matched = {m.method: m for m in runner.match_ratios(settings)}
    assert matched["uniform"].exponent == pytest.approx(2.0) and matched["uniform"].reduces == "q+kv"
    assert matched["kvonly"].exponent == pytest.approx(1.0) and matched["kvonly"].reduces == "kv"
    assert matched["uniform"].ratios == {"0.3": 0.3, "0.5": 0.5}
    # equal self-attention FLOPs: (1 - 0.3)² = 0.49 → kv-only ratio 0.51, on the 0.05 grid 0.5; 0.25 → 0.75
    assert matched["kvonly"].ratios == {"0.3": 0.5, "0.5": 0.75}
    # and the matched ratios really give (about) equal attention FLOPs on the probe model
    model, kw = runner.probe_model()
    dense = bflops.count_flops(lambda: model(**kw)).attention
    for method, r in (("uniform", 0.5), ("kvonly", 0.75)):
        red = runner.compile_for(model, runner.make_schedule(method, r, "attention", 0.0), "eager")
        red.capture(**kw)
        assert bflops.count_flops(lambda: red(**kw)).attention / dense == pytest.approx(0.25, abs=0.01)


def test_tensor_memory_tracker_counts_live_storages():
    n = 1000 * 1000 * 4

    def f():
        a = torch.randn(1000, 1000)
        b = a @ a
        del a
        c = b + 1       # a freed before c exists: peak is two matrices
        return c.view(-1)  # a view allocates nothing

    assert memory.peak_call_bytes(f) == 2 * n


def test_pixart_alpha_shape_and_model_spellings():
    bm = resolve_model("pixart-alpha:64:1")
    c = bm.module.config
    assert (c.num_attention_heads, c.attention_head_dim, c.caption_channels, c.patch_size) == (16, 72, 4096, 2)
    assert c.num_layers == 1 and bm.image_tokens == 64
    assert bm.kwargs["hidden_states"].shape == (2, 4, 16, 16)
    assert bm.kwargs["encoder_hidden_states"].shape == (2, 120, 4096)
    with pytest.raises(BenchModelError, match="square"):
        resolve_model("pixart-alpha:1000:1")
    with pytest.raises(BenchModelError, match="accepted spellings"):
        resolve_model("not-a-model")
    with pytest.raises(BenchModelError, match="not a diffusers model class"):
        resolve_model('NoSuchModel:{"a": 1}')
    tiny = resolve_model('DiTTransformer2DModel:{"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, '
                         '"out_channels": 8, "num_layers": 1, "sample_size": 8, "patch_size": 2, '
                         '"num_embeds_ada_norm": 1000, "norm_num_groups": 1}')
    assert tiny.image_tokens == 16
    with torch.no_grad():
        assert tiny.module(**tiny.kwargs)[0].shape == (2, 8, 8, 8)


def test_loading_the_small_dit_prints_no_install_notice(capfd):
    """diffusers' "install accelerate" block is not printed on each load of the shipped model (diffusers
    logs through its own stderr handler: captured at the file descriptor)."""
    bm = resolve_model("small-dit:16")
    cap = capfd.readouterr()
    assert "accelerate" not in cap.err + cap.out and bm.can_sample


def test_progress_bars_write_no_cursor_codes_into_a_captured_log(capfd):
    """A bench run's nested bars (configurations, then timing repeats) with stderr not a terminal: no
    carriage returns or cursor-up codes in the log."""
    bm = resolve_model("DiTTransformer2DModel:" + json.dumps(TINY_DIT))
    settings = runner.BenchSettings(methods=["uniform"], ratios=[0.5], quality=False, memory=False, repeats=2,
                                    warmup=0, steps=2, equal_flops=False)
    (row,) = runner.bench_model(bm, settings, [])
    err = capfd.readouterr().err
    assert row.error is None and row.timing.repeats == 2
    assert "\x1b[A" not in err and "\r" not in err, repr(err[-300:])


def test_bad_requests_are_named_errors(monkeypatch, capsys):
    with pytest.raises(runner.BenchError, match="registered: .*uniform"):
        runner.validate(runner.BenchSettings(methods=["nosuch"]))
    with pytest.raises(runner.BenchError, match="allowed: attention"):
        runner.validate(runner.BenchSettings(methods=["uniform"], scopes=["nosuch"]))
    assert main(["bench", "--methods", "nosuch", "--out", "unused"]) == 2
    assert "BenchError" in capsys.readouterr().err
    with pytest.raises(runner.BenchError, match="--params interval=2 for method 'uniform'"):
        runner.validate(runner.BenchSettings(methods=["uniform"], params=[{"uniform.interval": 2}]))
    with pytest.raises(runner.BenchError, match="--schedule nosuch.yaml"):
        runner.validate(runner.BenchSettings(methods=["uniform"], schedules=["nosuch.yaml"]))
    with pytest.raises(runner.BenchError, match="method.key=value"):
        runner.parse_params("dito")
    with pytest.raises(SystemExit):   # a malformed --params is an argparse error (exit 2)
        main(["bench", "--params", "a.b.c=1", "--out", "unused"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runner.BenchError, match="--device cuda: .*no CUDA device.*--device cpu"):
        runner.validate(runner.BenchSettings(methods=["uniform"], device="cuda"))
    assert main(["bench", "--device", "cuda", "--methods", "uniform", "--out", "unused"]) == 2
    assert "BenchError" in capsys.readouterr().err
    with pytest.raises(runner.BenchError, match="--device 'tpu'"):
        runner.validate(runner.BenchSettings(methods=["uniform"], device="tpu"))


def test_demo_auto_runs_the_preferred_registered_method(monkeypatch, tmp_path, capsys):
    from ditreduce.methods import METHODS
    from ditreduce.methods.uniform import Uniform

    # a stand-in registered as "todo" outranks uniform in the bench's order of preference
    for better in ("coredit", "dito", "tome"):
        monkeypatch.delitem(METHODS, better, raising=False)
    monkeypatch.setitem(METHODS, "todo", type("ToDoStandIn", (Uniform,), {"name": "todo", "reduces_q": False,
                                                                        "preferred": 3, "default_schedule": None}))
    out = tmp_path / "demo.png"
    assert main(["demo", "--samples", "1", "--steps", "5", "--res", "32", "--schedule", "auto", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    row = next(ln for ln in text.splitlines() if ln.startswith("todo 0.5, first 20% dense"))
    attn, whole = (float(x) for x in row.split()[-4:-2])
    assert 0 < attn < 1 and attn < whole < 1   # k/v halved on 4 of 5 steps; the linears keep their cost
    assert out.exists()


def test_a_model_the_schedule_cannot_reduce_is_an_error_row_not_a_dense_number():
    import zoo
    from ditreduce.bench.models import ModelSpec

    model, kw = zoo.build("sana")  # its only softmax attention is cross-attention
    settings = runner.BenchSettings(methods=["uniform"], ratios=[0.5], quality=False, memory=False, repeats=1,
                                    steps=4, equal_flops=False)
    assert runner.match_ratios(settings) == []
    (row,) = runner.bench_model(ModelSpec("sana", model, kw), settings, [])
    assert row.error.startswith("ScheduleError: the schedule reduces no attention site")
    assert row.timing is None and row.flops is None and row.ratio == 0.5


def test_dito_is_benched_on_the_variants_of_its_phases():
    """A stateful method is timed on the variants a real run calls (prime / match / reduce), not on the
    per-ratio keys alone."""
    from ditreduce.schedules.plan import plan_run

    model, kw = runner.probe_model()
    sched = runner.make_schedule("dito", 0.5, "attention", 0.2)
    v = runner.Variants(runner.compile_for(model, sched, "eager"), kw, 10)
    plan = plan_run(v.reduced.schedule, v.cap.sites, 10)
    keys, per_step = plan.keys, plan.per_step
    assert (v.keys, v.per_step) == (keys, per_step)
    assert len(v.keys) == 4 and per_step[:4] == [0, 1, 2, 3]  # dense, prime (the last dense step), match, reduce


def test_a_backend_is_compared_with_eager_on_the_same_state_chain():
    """The `max |output − eager output|` line compares DiTo's busiest (reduce) variant after the same chain of
    steps on both sides: the eager variants were just timed in rotated orders, which leaves other state behind
    (compared as is, two identical builds differ)."""
    model, kw = runner.probe_model()
    sched = runner.make_schedule("dito", 0.5, "attention", 0.2)
    timed, other = (runner.Variants(runner.compile_for(model, sched, "eager"), kw, 10) for _ in range(2))
    speed.interleaved_times({f"v{v}": timed.caller(v) for v in range(len(timed.keys))}, repeats=2, warmup=0)
    reduce_variant = 3
    with torch.no_grad():
        stale = runner._max_diff(other.call(reduce_variant), timed.call(reduce_variant))
    assert stale > 1e-3   # what the rotated loop leaves is another state
    assert runner.backend_diff(other, timed, reduce_variant) == 0.0


def test_params_sets_schedule_fields_and_method_keys():
    sets = [runner.parse_params(t) for t in ("prop_attn=false", "prop_attn=true", "dito.interval=2,dito.lam=0.3")]
    assert sets[2] == {"dito.interval": 2, "dito.lam": 0.3} and sets[0] == {"prop_attn": False}
    # a set naming another method's keys does not apply; schedule fields apply to every method
    assert runner.params_for("uniform", sets) == [{"prop_attn": False}, {"prop_attn": True}]
    assert runner.params_for("dito", sets)[2] == {"dito.interval": 2, "dito.lam": 0.3}
    assert runner.params_for("tome", [sets[2]]) == [{}] and runner.params_for("tome", []) == [{}]
    assert runner.params_label(sets[2]) == "interval=2,lam=0.3" and runner.params_label({}) is None
    s = runner.make_schedule("dito", 0.5, "attention", 0.2, {**sets[1], **sets[2]})
    assert s["prop_attn"] is True and s["params"] == {"dito": {"interval": 2, "lam": 0.3}}
    from ditreduce.schedules import load_schedule

    assert load_schedule(s).params["dito"]["interval"] == 2


def test_schedule_files_and_param_sets_are_configurations_of_one_run(tmp_path):
    """--schedule FILE runs as written, named by the file; each --params set is its own configuration;
    --device cpu --dtype bf16 moves the model and its inputs, and results.json records both."""
    sched = tmp_path / "half-uniform.yaml"
    sched.write_text("version: 1\nmethod: uniform\nratio: 0.25\nscope: attention\n")
    out = tmp_path / "out"
    assert main(["bench", "DiTTransformer2DModel:" + json.dumps(TINY_DIT), "--methods", "uniform", "--ratios", "0.5",
                 "--no-quality", "--no-equal-flops", "--repeats", "1", "--warmup", "0", "--steps", "2",
                 "--params", "prop_attn=false", "--params", "prop_attn=true", "--schedule", str(sched),
                 "--device", "cpu", "--dtype", "bf16", "--threads", "1", "--out", str(out)]) == 0
    res = BenchResults.load(out / "results.json")
    assert res.settings["device"] == "cpu" and res.settings["dtype"] == "bf16"
    assert res.models[0]["dtype"] == "bfloat16" and res.models[0]["device"] == "cpu"
    assert [(r.method, r.config, r.ratio) for r in res.rows] == [
        ("uniform", "prop_attn=false", 0.5), ("uniform", "prop_attn=true", 0.5),
        ("half-uniform", str(sched), 0.25)]
    assert [r.schedule.get("prop_attn") for r in res.rows] == [False, True, False]
    assert all(r.error is None and r.timing.clock == "time.perf_counter" for r in res.rows)
    assert res.rows[2].flops.attention_ratio < 1   # the file's schedule reduced
    md = (out / "results.md").read_text()
    assert "uniform [prop_attn=true]" in md and "bf16" in md


TINY_DIT = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=1)


def test_device_and_dtype_move_the_model_and_its_inputs():
    bm = resolve_model("DiTTransformer2DModel:" + json.dumps(TINY_DIT))
    place(bm, "cpu", "bf16")
    assert next(bm.module.parameters()).dtype == torch.bfloat16
    assert bm.kwargs["hidden_states"].dtype == torch.bfloat16
    assert bm.kwargs["timestep"].dtype == torch.float32 and bm.kwargs["class_labels"].dtype == torch.long
    with torch.no_grad():
        assert bm.module(**bm.kwargs)[0].dtype == torch.bfloat16


def test_cuda_timing_and_memory_use_events_and_the_allocator(monkeypatch):
    """On a CUDA device the timer records events around each call and memory is the allocator's peak
    (faked here: no GPU on the CPU machines)."""
    calls = []

    class Event:
        def __init__(self, enable_timing):
            self.t = None

        def record(self):
            calls.append("record")
            self.t = len(calls)

        def synchronize(self):
            calls.append("sync")

        def elapsed_time(self, end):
            return 1000.0 * (end.t - self.t)   # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("device sync"))
    times = speed.interleaved_times({"a": lambda: calls.append("call")}, repeats=2, warmup=0, device="cuda")
    assert times["a"] == [2.0, 2.0]   # record, call, record: 2 s between the events
    assert calls[:5] == ["device sync", "record", "call", "record", "sync"]
    assert speed.clock("cuda") == "cuda events" and speed.clock("cpu") == "time.perf_counter"
    allocated = iter([100, 100])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: next(allocated))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1124)
    assert memory.peak_call_bytes(lambda: None, "cuda") == 1024
    assert "max_memory_allocated" in memory.what("cuda")


def test_bench_docs_rewrites_only_its_marked_block(tmp_path, quick, capsys):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n\n<!-- bench:quick -->\nold table\n<!-- /bench:quick -->\n\n"
                   "<!-- bench:other -->\nkeep me\n<!-- /bench:other -->\n\nouttro\n")
    assert main(["bench-docs", str(quick / "results.json"), str(doc), "--block", "quick",
                 "--tables", "quality,speed"]) == 0
    text = doc.read_text()
    assert "old table" not in text and "keep me" in text and text.startswith("# Benchmarks\n\nintro\n")
    assert text.rstrip().endswith("outtro")
    block = text[text.index("<!-- bench:quick -->"):text.index("<!-- /bench:quick -->")]
    assert "```bash\nditreduce bench " in block   # the recorded command line, as a user types it
    assert "Measured 20" in block and "threads on" in block and "fp32" in block
    assert "| small-dit:32 | uniform | attention | eager | 0.5 |" in block and "Matched ratios" not in block
    assert "rewrote block bench:quick" in capsys.readouterr().out
    again = doc.read_text()
    assert main(["bench-docs", str(quick / "results.json"), str(doc), "--block", "quick",
                 "--tables", "quality,speed"]) == 0
    assert doc.read_text() == again   # idempotent
    assert main(["bench-docs", str(quick / "results.json"), str(doc), "--block", "new"]) == 0
    assert doc.read_text().rstrip().endswith("<!-- /bench:new -->") and "Matched ratios" in doc.read_text()


def test_gpu_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """tools/gpu_check.sh --dry-run: the GPU script's commands on the CPU at tiny sizes, every step's
    results.json + markdown under $OUT (about 60-90 s of CPU time: five processes, each importing torch and
    diffusers and capturing once or twice)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", str(root / "tools" / "gpu_check.sh"), "--dry-run"], cwd=root, timeout=600,
                          env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = (tmp_path / "status.md").read_text()
    for step in ("equality", "speed-4096-eager", "speed-16384-eager", "quality-small-dit"):
        assert f"| {step} | ok |" in status, status
        assert (tmp_path / step / "results.json").stat().st_size > 0
        assert (tmp_path / step / "results.md").stat().st_size > 0
    assert json.loads((tmp_path / "equality" / "results.json").read_text())["passed"] is True
    assert "| probe-4096 | ok |" in status, status   # tools/gpu_probe.py: one row per method
    assert "| uniform | " in (tmp_path / "probe-4096" / "results.md").read_text()
    speed_res = BenchResults.load(tmp_path / "speed-4096-eager" / "results.json")
    assert speed_res.settings["dtype"] == "bf16" and speed_res.settings["device"] == "cpu"
    assert "## quality-small-dit" in (tmp_path / "summary.md").read_text()


def test_inductor_mode_compiles_the_variants_and_the_dense_baseline_alike(monkeypatch):
    """`bench --inductor-mode M`: the inductor variants get backend_options mode M and the dense baseline is
    torch.compile(module, mode=M), so a CUDA-graph table compares CUDA graphs with CUDA graphs."""
    bm = resolve_model("small-dit:16")
    seen = []
    monkeypatch.setattr(runner.torch, "compile", lambda m, **o: seen.append(o.get("mode")) or m)
    reduced = runner.compile_for(bm.module, {"method": "uniform", "ratio": 0.5}, "inductor", "cpu", "reduce-overhead")
    assert reduced.backend_options.mode == "reduce-overhead"
    assert runner.compile_for(bm.module, {"method": "uniform", "ratio": 0.5}, "inductor").backend_options.mode == "default"
    call, what = runner._dense_baseline(bm, "inductor", {}, "reduce-overhead")
    assert seen == ["reduce-overhead"] and what == "torch.compile(module, mode='reduce-overhead') (inductor)"
    with pytest.raises(SystemExit):
        main(["bench", "small-dit:16", "--inductor-mode", "fast"])
