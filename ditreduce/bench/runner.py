"""The bench: for each model and each (method, scope, ratio, backend), FLOPs (FlopCounterMode), peak
tensor memory, wall time interleaved with dense in the same process, and — on a model that samples —
PSNR / SSIM against dense on the same seeds. Returns a `BenchResults`; `report.write_outputs` writes it."""
from __future__ import annotations

import os
import platform
import sys
import time
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone

import torch

from ..passes.capture import UnsupportedModelError
from ..passes.layout import LayoutError
from ..schedules import ScheduleError, load_schedule, schedule_dict
from ..schedules.ir import MAX_RATIO
from . import memory, speed
from .flops import Flops, attention_exponent, count_flops, matched_ratio
from .models import ModelSpec
from .progress import progress_bar
from .quality import QualitySetup, compare, draw
from .results import (BenchResults, FlopsRecord, MatchedRatio, MemoryRecord, QualityRecord, Row, Stat,
                     TimingRecord)
from .device import DTYPES, place
from .variants import StepVariants
from .tomesd import TOMESD, TOMESD_SCOPE, TomesdUnavailableError, TomesdVariants

NAMED_ERRORS = (ScheduleError, UnsupportedModelError, LayoutError, TomesdUnavailableError)
PROBE_RATIO = 0.5


from ..errors import BenchError  # noqa: E402

def registered_methods() -> list[str]:
    from ..methods import METHODS

    return list(METHODS)


def default_methods() -> list[str]:
    """Every registered method, best first (methods.preferred_methods: Method.preferred, as measured by `ditreduce
    bench small-dit`, docs/benchmarks.md), then any other registered one (a user's own method included)."""
    from ..methods import preferred_methods

    return preferred_methods()


def known_scopes() -> list[str]:
    from ..schedules import ir

    return [str(a) for a in typing.get_args(getattr(ir, "Scope", None))]  # for messages; load_schedule decides


@dataclass
class BenchSettings:
    methods: list[str] = field(default_factory=default_methods)
    ratios: list[float] = field(default_factory=lambda: [0.3, 0.5])
    scopes: list[str] = field(default_factory=lambda: ["attention"])
    backends: list[str] = field(default_factory=lambda: ["eager"])
    steps: int = 20
    seeds: int = 6
    first_seed: int = 0
    dense_fraction: float = 0.2
    repeats: int = 5
    warmup: int = 1
    guidance: float = 3.0
    equal_flops: bool = True
    quality: bool = True
    memory: bool = True
    device: str = "cpu"
    dtype: str = "fp32"
    inductor_mode: str = "default"   # torch.compile's mode for the inductor backend and its dense baseline
    # parameter sets (see parse_params): each runs as its own configuration of the methods it names
    params: list[dict] = field(default_factory=list)
    # schedule files / presets, each one configuration named by the file (run as written, not FLOPs-matched)
    schedules: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def quality_seeds(self) -> tuple[int, ...]:
        """The samples' seeds: first_seed … first_seed + seeds − 1."""
        return tuple(range(self.first_seed, self.first_seed + self.seeds))


def parse_params(text: str) -> dict:
    """`--params` value: `method.key=value` (a method parameter) or `key=value` (a schedule field, e.g.
    prop_attn), several joined by commas; values read as YAML (2, 0.3, true, shared). One set -> a dict
    {"method.key" or "key": value}."""
    import re

    import yaml

    out = {}
    for item in re.split(r",(?=\s*[A-Za-z_][\w.]*\s*=)", text):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or key.count(".") > 1:
            raise BenchError(f"--params {text!r}: write method.key=value or key=value (a schedule field such as "
                             "prop_attn), several joined by commas, e.g. dito.interval=2,dito.lam=0.3")
        out[key] = yaml.safe_load(value.strip()) if value.strip() else ""
    return out


def params_for(method: str, sets: list[dict]) -> list[dict]:
    """The distinct parameter sets one method runs: the sets that name this method or only schedule fields,
    each restricted to those keys; [{}] (its defaults) when none does."""
    if method == TOMESD:
        return [{}]
    out = []
    for s in sets:
        names = {k.split(".", 1)[0] for k in s if "." in k}
        if names and method not in names:
            continue
        mine = {k: v for k, v in s.items() if "." not in k or k.split(".", 1)[0] == method}
        if mine not in out:
            out.append(mine)
    return out or [{}]


def params_label(params: dict) -> str | None:
    def fmt(v):
        return str(v).lower() if isinstance(v, bool) else str(v)
    return ",".join(f"{k.split('.', 1)[-1]}={fmt(v)}" for k, v in params.items()) or None


def make_schedule(method: str, ratio: float, scope: str, dense_fraction: float, params: dict | None = None) -> dict:
    return schedule_dict(method, ratio, scope, dense_fraction, params)


def schedule_entry(spec: str) -> tuple[str, dict]:
    """(name, schedule dict) of a `--schedule` file or preset: named by the file's stem."""
    from pathlib import Path

    try:
        sched = load_schedule(spec)
    except ScheduleError as e:
        raise BenchError(f"--schedule {spec}: {e}") from None
    return Path(spec).stem, sched.model_dump(mode="json", exclude_none=True)


def validate(settings: BenchSettings) -> None:
    """Fail before any measurement: every method, scope, parameter set, schedule file, backend, device and
    dtype must exist in this build and on this machine."""
    if not settings.methods and not settings.schedules:
        raise BenchError("--methods: none given and no method is registered")
    for m in settings.methods:
        if m not in registered_methods() and m != TOMESD:
            raise BenchError(f"--methods: {m!r} is not registered; registered: {', '.join(registered_methods())} "
                             f"(and {TOMESD}, the external baseline)")
    ours = [m for m in settings.methods if m != TOMESD]
    for s in settings.scopes:
        try:
            load_schedule(make_schedule((ours or ["uniform"])[0], 0.5, s, 0.0))
        except ScheduleError as e:
            allowed = ", ".join(known_scopes()) or "see `ditreduce schema`"
            raise BenchError(f"--scopes: {s!r} is not a scope of this build; allowed: {allowed} ({e})") from None
    for r in settings.ratios:
        if not 0 < r <= MAX_RATIO:
            raise BenchError(f"--ratios: {r} is outside (0, {MAX_RATIO}]")
    if not 0 <= settings.dense_fraction < 1:
        raise BenchError(f"--dense-fraction: {settings.dense_fraction} is outside [0, 1)")
    for m in ours:
        for p in params_for(m, settings.params):
            for s in settings.scopes:
                try:
                    load_schedule(make_schedule(m, settings.ratios[0], s, settings.dense_fraction, p))
                except ScheduleError as e:
                    if not p:
                        raise
                    raise BenchError(f"--params {params_label(p)} for method {m!r}: {e}") from None
    for spec in settings.schedules:
        schedule_entry(spec)
    if settings.dtype not in DTYPES:
        raise BenchError(f"--dtype {settings.dtype!r}: allowed: {', '.join(DTYPES)}")
    dev = settings.device
    if dev != "cpu" and not dev.startswith("cuda"):
        raise BenchError(f"--device {dev!r}: allowed: cpu, cuda, cuda:N")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {dev}: torch {torch.__version__} sees no CUDA device on this machine "
                         f"(torch.cuda.is_available() is False); use --device cpu")


def compile_for(model, schedule, backend: str, device: str = "cpu", inductor_mode: str = "default"):
    """compile_with_reduction on `backend`; ONNX Runtime runs on its CUDA provider when the device is cuda,
    inductor in `inductor_mode`."""
    from .. import compile_with_reduction

    options = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"]} \
        if backend == "onnxruntime" and device.startswith("cuda") else None
    if backend == "inductor" and inductor_mode != "default":
        options = {"mode": inductor_mode}
    return compile_with_reduction(model, schedule, backend=backend, backend_options=options)


# ---------------------------------------------------------------------------------------------- FLOPs matching
def probe_model():
    """A tiny DiT whose only attention is self-attention over an 8x8 lattice (64 tokens): its attention
    FLOPs at ratio r are (1 − r)^p of dense, p = 2 for q+kv methods, 1 for kv-only ones."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    m = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                              num_layers=1, sample_size=16, patch_size=2, num_embeds_ada_norm=1000,
                              norm_num_groups=1).eval()
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.full((2,), 500.0),
              class_labels=torch.zeros(2, dtype=torch.long), return_dict=False)
    return m, kw


def match_ratios(settings: BenchSettings) -> list[MatchedRatio]:
    """For each (method, scope): the exponent measured on the probe and the ratio giving each nominal
    ratio's self-attention FLOPs, (1 − nominal)², i.e. what a q+kv method at the nominal ratio costs.
    Empty (no probe) when equal FLOPs is off: the ratios then run as given."""
    if not settings.equal_flops:
        return []
    model, kw = probe_model()
    dense = count_flops(lambda: model(**kw))
    out = []
    for method in settings.methods:
        if method == TOMESD:  # not probed: its merge precedes attn1's projections, so q, k and v shrink alike
            out.append(MatchedRatio(method=method, scope=TOMESD_SCOPE, exponent=2.0, reduces="q+kv",
                                    ratios={str(r): matched_ratio((1 - r) ** 2, 2.0) for r in settings.ratios}))
            continue
        for scope in settings.scopes:
            try:
                reduced = compile_for(model, make_schedule(method, PROBE_RATIO, scope, 0.0), "eager")
                # a two-step generation, counted at the second step: a method that carries state across
                # steps (or treats the first step apart) is probed in its steady state
                with torch.no_grad(), reduced.generation(num_steps=2):
                    reduced(**kw)
                    probe = count_flops(lambda: reduced(**dict(kw, timestep=kw["timestep"] - 100)))
            except NAMED_ERRORS as e:
                raise BenchError(f"FLOPs probe of method {method!r} in scope {scope!r} failed: {type(e).__name__}: "
                                 f"{e}") from None
            p = attention_exponent(dense, probe, PROBE_RATIO)
            if p < 0.5:
                raise BenchError(f"FLOPs probe: method {method!r} in scope {scope!r} at ratio {PROBE_RATIO} cut "
                                 f"attention FLOPs only to {probe.attention / dense.attention:.3f} of dense on the "
                                 "probe DiT, so no equal-FLOPs ratio can be derived; use --no-equal-flops")
            ratios = {str(r): matched_ratio((1 - r) ** 2, p) for r in settings.ratios}
            out.append(MatchedRatio(method=method, scope=scope, exponent=round(p, 4),
                                    reduces="q+kv" if p > 1.5 else "kv", ratios=ratios))
    return out


# ---------------------------------------------------------------------------------------------- one model
class Variants(StepVariants):
    """A reduced model captured on the bench call, its distinct variants over a run and a caller per variant."""

    def __init__(self, reduced, kwargs: dict, steps: int):
        self.reduced, self.kwargs, self.steps = reduced, kwargs, steps
        t0 = time.perf_counter()
        self.cap = cap = reduced.capture(**kwargs)
        self.capture_s = time.perf_counter() - t0
        # the variants a real run calls: with DiTo phases (prime / match / reduce) where the schedule has state
        plan = reduced.plan(cap, steps)
        self.keys, self.per_step = list(plan.keys), list(plan.per_step)
        self._warm()

    def graph_caller(self):
        """The captured graph at ratio 0 (every site dense) on this backend: what a reduced model costs before
        any token is removed."""
        run = self.reduced.runner(self.cap, (None,) * len(self.cap.sites), self.kwargs)
        return lambda: run(**self.kwargs)


def _stat(values: list[float]) -> Stat:
    return Stat(**speed.stats(values))


def flops_record(dense: Flops, per_variant: list[Flops], per_step: list[int]) -> tuple[FlopsRecord, int]:
    busiest = min(range(len(per_variant)), key=lambda v: (per_variant[v].attention, per_variant[v].whole))
    steps = len(per_step)
    run_w = sum(per_variant[v].whole for v in per_step)
    run_a = sum(per_variant[v].attention for v in per_step)
    rec = FlopsRecord(whole_dense=dense.whole, whole_reduced=per_variant[busiest].whole,
                      attention_dense=dense.attention, attention_reduced=per_variant[busiest].attention,
                      run_whole_dense=steps * dense.whole, run_whole_reduced=run_w,
                      run_attention_dense=steps * dense.attention, run_attention_reduced=run_a,
                      whole_ratio=run_w / (steps * dense.whole),
                      attention_ratio=run_a / (steps * dense.attention) if dense.attention else 1.0,
                      ideal_speedup=steps * dense.whole / run_w)
    return rec, busiest


def _dense_baseline(bm: ModelSpec, backend: str, cache: dict, inductor_mode: str = "default"):
    """(callable, description) of dense for a backend: the eager module, or torch.compile'd for inductor
    (in the mode the variants compile in)."""
    if backend == "eager":
        return (lambda: bm.module(**bm.kwargs)), "eager module"
    if backend == "inductor":
        if "inductor" not in cache:
            cache["inductor"] = torch.compile(bm.module, mode=inductor_mode)
        fn = cache["inductor"]
        mode = "" if inductor_mode == "default" else f", mode={inductor_mode!r}"
        return (lambda: fn(**bm.kwargs)), f"torch.compile(module{mode}) (inductor)"
    return (lambda: bm.module(**bm.kwargs)), "eager module (no dense build for this backend)"


@dataclass
class Config:
    """One configuration of a model's table: a method at a ratio in a scope with a parameter set, or a
    schedule file run as written."""
    method: str
    scope: str
    nominal: float
    ratio: float
    schedule: dict
    params: dict = field(default_factory=dict)
    config: str | None = None     # the parameter set or the schedule file, as the tables show it

    @property
    def key(self) -> tuple:
        return (self.method, self.scope, self.nominal, self.config)


def configurations(settings: BenchSettings, matched: list[MatchedRatio]) -> list[Config]:
    ratio_of = {(m.method, m.scope): m.ratios for m in matched}
    out = []
    for method in settings.methods:
        for scope in settings.scopes if method != TOMESD else [TOMESD_SCOPE]:
            for params in params_for(method, settings.params):
                for nominal in settings.ratios:
                    ratio = ratio_of[(method, scope)][str(nominal)] if settings.equal_flops else nominal
                    out.append(Config(method, scope, nominal, ratio,
                                      make_schedule(method, ratio, scope, settings.dense_fraction, params), params,
                                      params_label(params)))
    for spec in settings.schedules:
        name, sched = schedule_entry(spec)
        out.append(Config(name, sched.get("scope", "attention+proj"), sched.get("ratio", 0.5),
                          sched.get("ratio", 0.5), sched, config=spec))
    return out


def bench_model(bm: ModelSpec, settings: BenchSettings, matched: list[MatchedRatio],
                grid_rows: list | None = None) -> list[Row]:
    """Every configuration of the settings on one model; rows in (method, scope, ratio, backend) order."""
    kw = bm.kwargs
    dev = settings.device
    dense_fn = lambda: bm.module(**kw)  # noqa: E731
    with torch.no_grad():
        dense_flops = count_flops(dense_fn)
        dense_mem = memory.peak_call_bytes(dense_fn, dev) if settings.memory else None
    params = memory.param_bytes(bm.module)
    setup = dense = None
    if settings.quality and bm.can_sample:
        setup = QualitySetup(settings.quality_seeds, settings.steps, bm.res, settings.guidance, dev, settings.dtype)
        dense = draw(bm.small_dit, setup, desc=f"{bm.name} dense samples")
        if grid_rows is not None:
            grid_rows.append(("dense", dense.images))
    configs = configurations(settings, matched)
    rows: list[Row] = []
    built: list = []
    baselines: dict = {}
    for c in progress_bar(configs, desc=bm.name, leave=True):
        base = dict(model=bm.name, image_tokens=bm.image_tokens, blocks=bm.blocks, method=c.method, scope=c.scope,
                    nominal_ratio=c.nominal, ratio=c.ratio, schedule=c.schedule, steps=settings.steps,
                    config=c.config)
        try:
            eager = TomesdVariants(bm.module, kw, settings.steps, c.ratio, settings.dense_fraction) \
                if c.method == TOMESD else Variants(compile_for(bm.module, c.schedule, "eager"), kw, settings.steps)
            with torch.no_grad():
                # the all-dense variant is the captured graph itself: dense FLOPs, no need to count again
                per_variant = [dense_flops if _is_dense_key(key) else count_flops(eager.caller(v))
                               for v, key in enumerate(eager.keys)]
            flops, busiest = flops_record(dense_flops, per_variant, eager.per_step)
            mem = None
            if settings.memory:
                with torch.no_grad():
                    mem = MemoryRecord(what=memory.what(dev), dense_peak_bytes=dense_mem, param_bytes=params,
                                       reduced_peak_bytes=memory.peak_call_bytes(eager.caller(busiest), dev))
            qual = None
            if setup is not None:
                label = f"{c.method} {c.scope} r={c.ratio:g}" + (f" {c.config}" if c.config else "")
                red = draw(bm.small_dit, setup, transformer=eager.reduced, desc=label)
                ps, ss = compare(red.images, dense.images)
                qual = QualityRecord(psnr_db=_stat(ps), ssim=_stat(ss), seeds=list(setup.seeds), steps=setup.steps,
                                     res=setup.res, guidance=setup.guidance, sample_s_dense=dense.seconds,
                                     sample_s_reduced=red.seconds, psnr_per_seed=ps, ssim_per_seed=ss)
                if grid_rows is not None:
                    grid_rows.append((f"{c.method} {c.scope}\nr={c.ratio:g}" + (f" {c.config}" if c.config else ""),
                                      red.images))
        except NAMED_ERRORS as e:
            for backend in settings.backends:
                rows.append(Row(**base, backend=backend, error=f"{type(e).__name__}: {e}"))
            continue
        built.append((base, eager, flops, busiest, mem, qual))
    for backend in settings.backends:
        rows += _time_backend(bm, settings, backend, built, baselines)
    order = {c.key: i for i, c in enumerate(configs)}
    return sorted(rows, key=lambda r: (order[(r.method, r.scope, r.nominal_ratio, r.config)],
                                       settings.backends.index(r.backend)))


def _is_dense_key(key) -> bool:
    return all(c is None for c in key)


def _max_diff(a, b) -> float:
    """max |a − b| over the first output tensor of two calls, in fp32."""
    a, b = (x[0] if isinstance(x, (tuple, list)) else x for x in (a, b))
    return (a.float() - b.float()).abs().max().item()


def backend_diff(run: StepVariants, eager: StepVariants, v: int) -> float:
    """max |output − eager output| of variant v, both run through the same chain of steps before it, so a
    stateful method (DiTo) compares outputs of equal state, not of what the timing loop left behind."""
    with torch.no_grad():
        return _max_diff(run.call_in_step_order(v), eager.call_in_step_order(v))


def _time_backend(bm: ModelSpec, settings: BenchSettings, backend: str, built: list, baselines: dict) -> list[Row]:
    """Time every configuration of one model on one backend in ONE interleaved loop: dense, the captured
    graph at ratio 0 (the all-dense variant every configuration shares: timed once) and each
    configuration's reduced variants. All speedups of the table divide the same dense times. A non-eager
    backend's busiest variant is also compared with the eager one's output (max |difference|)."""
    rows, runs = [], []
    for base, eager, flops, busiest, mem, qual in built:
        if base["method"] == TOMESD and backend != "eager":
            rows.append(Row(**base, backend=backend, error=f"{TOMESD} runs on the eager module only"))
            continue
        diff = None
        try:
            if backend == "eager":
                run = eager
            else:
                run = Variants(compile_for(bm.module, base["schedule"], backend, settings.device,
                                           settings.inductor_mode), bm.kwargs, settings.steps)
                diff = backend_diff(run, eager, busiest)
        except NAMED_ERRORS as e:
            rows.append(Row(**base, backend=backend, error=f"{type(e).__name__}: {e}"))
            continue
        runs.append((base, run, flops, busiest, mem, qual, diff))
    if not runs:
        return rows
    dense_call, dense_what = _dense_baseline(bm, backend, baselines, settings.inductor_mode)
    fns = {"dense": dense_call, "graph": runs[0][1].graph_caller()}
    for i, (_, run, *_rest) in enumerate(runs):
        fns |= {f"c{i}v{v}": run.caller(v) for v, key in enumerate(run.keys) if not _is_dense_key(key)}
    times = speed.interleaved_times(fns, settings.repeats, settings.warmup, desc=f"{bm.name} {backend}",
                                    device=settings.device)
    graph_sp = _stat(speed.per_repeat_speedups(times["dense"], times["graph"]))
    for i, (base, run, flops, busiest, mem, qual, diff) in enumerate(runs):
        vt = [times["graph"] if _is_dense_key(key) else times[f"c{i}v{v}"] for v, key in enumerate(run.keys)]
        run_sp = _stat(speed.run_speedups(times["dense"], vt, run.per_step))
        timing = TimingRecord(dense_baseline=dense_what, dense_s=_stat(times["dense"]),
                              reduced_s=_stat(vt[busiest]),
                              call_speedup=_stat(speed.per_repeat_speedups(times["dense"], vt[busiest])),
                              run_speedup=run_sp, achieved_over_ideal=run_sp.median / flops.ideal_speedup,
                              repeats=settings.repeats, dense_times=times["dense"], variant_times=vt,
                              busiest_variant=busiest, graph_speedup=graph_sp, clock=speed.clock(settings.device))
        rows.append(Row(**base, backend=backend, variants=len(run.keys), per_step_variant=run.per_step,
                        capture_s=run.capture_s, compile_s=run.compile_s, flops=flops, timing=timing,
                        memory=mem if backend == "eager" else None, quality=qual, max_abs_diff_to_eager=diff))
    return rows


def machine_info(device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            **({"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda} if device.startswith("cuda") else {})}


def run_bench(models: list[ModelSpec], settings: BenchSettings, command: list[str] | None = None,
              grid_rows: list | None = None) -> BenchResults:
    from .. import __version__

    validate(settings)
    matched = match_ratios(settings)
    rows: list[Row] = []
    for bm in models:
        place(bm, settings.device, settings.dtype)
        rows += bench_model(bm, settings, matched, grid_rows if bm.can_sample else None)
    return BenchResults(ditreduce_version=__version__, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        command=list(command if command is not None else sys.argv), machine=machine_info(settings.device),
                        settings=settings.as_dict(), equal_flops=settings.equal_flops, matched=matched,
                        models=[{"name": m.name, "image_tokens": m.image_tokens, "blocks": m.blocks, **m.info}
                                for m in models],
                        rows=rows, process_peak_rss_bytes=memory.process_peak_rss_bytes())
