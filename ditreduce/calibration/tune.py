"""`ditreduce tune`: the fastest schedule whose median PSNR against dense, on calibration seeds, is at least
a target.

The search, in the order it spends its time (it stops where `--minutes` runs out and keeps the best found):

1. For every method × scope × proportional attention (off / on), the largest ratio on the schedule's grid
   (multiples of 0.05 up to the method's largest) whose median PSNR meets the target, by bisection (quality
   falls as the ratio rises).
2. Those configurations timed in one interleaved loop against dense (the bench's run speedup: every
   variant of a run timed as the step it serves, weighted by how many steps it serves).
3. The fastest two refined: a shorter dense prefix, then a higher ratio over the last half of the
   reduced steps (quality is worth least there), each kept only if the target still holds.
4. Every configuration that met the target timed again in one loop; the fastest is written as an ordinary
   schedule, with what was measured in its header (its median run speedup, the spread over the repeats, and
   its FLOPs over the run). Where even the fastest is no faster than dense (median run speedup <= 1), the
   target cannot pay at this size: a TuneError, and nothing is written.

Quality is measured on seeds 1000 and above, which the bench and the demo never evaluate on. A candidate
meets the target when its median PSNR is at least target + margin (`--margin-db`, default 1 dB): a median of a
few samples spreads by dB from one seed set to another, and the margin keeps a schedule found on the
calibration seeds above the target on others.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from ..errors import DitreduceError
from ..schedules import load_schedule, schedule_dict

CALIBRATION_SEED0 = 1000
RATIO_STEP = 0.05
PROP_ATTN = {"off": (False,), "on": (True,), "both": (False, True)}


class TuneError(DitreduceError, ValueError):
    """No configuration meets the quality target, none that meets it is faster than dense, or the model cannot
    be sampled for quality."""


@dataclass(frozen=True)
class Candidate:
    """One schedule the search may write: a method in a scope at a ratio, dense for the first steps,
    optionally a higher ratio over the last half of the reduced steps, with or without proportional
    attention."""

    method: str
    scope: str
    ratio: float
    dense_fraction: float
    late_ratio: float | None = None
    prop_attn: bool = False

    def schedule(self) -> dict:
        return schedule_dict(self.method, self.ratio, self.scope, self.dense_fraction,
                             {"prop_attn": True} if self.prop_attn else None, self.late_ratio)

    @property
    def label(self) -> str:
        late = f", late {self.late_ratio:g}" if self.late_ratio is not None else ""
        prop = ", prop_attn" if self.prop_attn else ""
        return f"{self.method} {self.scope}{prop} r={self.ratio:g}{late}, dense {self.dense_fraction:.0%}"


@dataclass
class Trial:
    candidate: Candidate
    psnr: list[float]
    run_speedup: float | None = None              # median over the repeats of run_speedups
    run_speedups: list[float] = field(default_factory=list)
    call_speedup: float | None = None
    attention_flops: float | None = None          # self-attention FLOPs over the run / dense
    flops: float | None = None                    # whole-model FLOPs over the run / dense

    @property
    def median_psnr(self) -> float:
        return statistics.median(self.psnr)


@dataclass
class TuneSettings:
    min_psnr: float
    methods: list[str]
    scopes: list[str]
    steps: int = 20
    seeds: int = 6
    margin: float = 1.0
    dense_fraction: float = 0.2
    prop_attn: tuple[bool, ...] = (False, True)
    repeats: int = 3
    minutes: float = 20.0
    guidance: float = 3.0


@dataclass
class TuneResult:
    best: Trial
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False


def ratio_grid(max_ratio: float) -> list[float]:
    n = int(round(max_ratio / RATIO_STEP + 1e-9))
    return [round(RATIO_STEP * i, 4) for i in range(1, n + 1)]


class Tuner:
    """Quality and speed of candidates on one model that samples (the shipped small DiT)."""

    def __init__(self, bm, settings: TuneSettings, log=print):
        from .. import compile_with_reduction
        from ..bench.quality import QualitySetup, draw

        if not getattr(bm, "can_sample", False):
            raise TuneError(f"tune needs a model it can sample to measure quality; {bm.name!r} cannot "
                            "(use small-dit or small-dit:RES)")
        self.bm, self.settings, self.log = bm, settings, log
        self.deadline = time.monotonic() + 60 * settings.minutes
        seeds = tuple(range(CALIBRATION_SEED0, CALIBRATION_SEED0 + settings.seeds))
        self.setup = QualitySetup(seeds, settings.steps, bm.res, settings.guidance)
        self.dense = draw(bm.small_dit, self.setup, desc="dense (calibration seeds)").images
        self.reduced = compile_with_reduction(bm.module, {"method": "uniform", "ratio": 0.0})
        self.trials: dict[Candidate, Trial] = {}

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    def quality(self, cand: Candidate) -> Trial:
        """Median PSNR of the candidate against dense on the calibration seeds (cached)."""
        from ..bench.quality import compare, draw

        if cand not in self.trials:
            self.reduced.schedule = load_schedule(cand.schedule())
            images = draw(self.bm.small_dit, self.setup, transformer=self.reduced, desc=cand.label).images
            self.trials[cand] = Trial(cand, compare(images, self.dense)[0])
            self.log(f"  {cand.label}: median PSNR {self.trials[cand].median_psnr:.2f} dB")
        return self.trials[cand]

    def meets(self, cand: Candidate) -> bool:
        return self.quality(cand).median_psnr >= self.threshold

    @property
    def threshold(self) -> float:
        """What a candidate's median PSNR on the calibration seeds must reach: the target plus the margin."""
        return self.settings.min_psnr + self.settings.margin

    def largest_ratio(self, method: str, scope: str, prop_attn: bool = False) -> Trial | None:
        """Bisection over the ratio grid for the largest ratio meeting the target (None: not even the smallest)."""
        from ..methods import METHODS

        grid = ratio_grid(METHODS[method].max_ratio)

        def at(i: int) -> Candidate:
            return Candidate(method, scope, grid[i], self.settings.dense_fraction, prop_attn=prop_attn)

        lo, hi = -1, len(grid)   # grid[lo] meets the target (lo = -1: none known); grid[hi] does not
        while hi - lo > 1 and not self.out_of_time():
            mid = (lo + hi) // 2
            if self.meets(at(mid)):
                lo = mid
            else:
                hi = mid
        return None if lo < 0 else self.trials[at(lo)]

    def refine(self, trial: Trial) -> Trial:
        """A shorter dense prefix, then a higher late ratio, each kept while the target holds."""
        from ..methods import METHODS

        best = trial.candidate
        for frac in (best.dense_fraction / 2, 0.0):
            if frac < best.dense_fraction and not self.out_of_time() and self.meets(replace(best, dense_fraction=frac)):
                best = replace(best, dense_fraction=frac)
                break
        top = METHODS[best.method].max_ratio
        for late in (best.ratio + 0.2, best.ratio + 0.1):
            late = round(min(late, top), 4)
            if late > best.ratio and not self.out_of_time() and self.meets(replace(best, late_ratio=late)):
                best = replace(best, late_ratio=late)
                break
        return self.trials[best]

    def time_trials(self, trials: list[Trial]) -> None:
        """Run and per-call speedups of every trial, in one interleaved loop with dense (the bench's timing)."""
        from .. import compile_with_reduction
        from ..bench import speed
        from ..bench.flops import count_flops
        from ..bench.runner import Variants, _is_dense_key

        kw, s = self.bm.kwargs, self.settings
        with torch.no_grad():
            dense = count_flops(lambda: self.bm.module(**kw))
        runs = [Variants(compile_with_reduction(self.bm.module, t.candidate.schedule()), kw, s.steps) for t in trials]
        fns = {"dense": lambda: self.bm.module(**kw), "graph": runs[0].graph_caller()}
        for i, run in enumerate(runs):
            fns |= {f"c{i}v{v}": run.caller(v) for v, key in enumerate(run.keys) if not _is_dense_key(key)}
        times = speed.interleaved_times(fns, s.repeats, warmup=1, desc="timing")
        for i, (trial, run) in enumerate(zip(trials, runs)):
            vt = [times["graph"] if _is_dense_key(key) else times[f"c{i}v{v}"] for v, key in enumerate(run.keys)]
            trial.run_speedups = speed.run_speedups(times["dense"], vt, run.per_step)
            trial.run_speedup = statistics.median(trial.run_speedups)
            with torch.no_grad():
                fl = [count_flops(run.caller(v)) if not _is_dense_key(key) else dense for v, key in enumerate(run.keys)]
            att = [f.attention for f in fl]
            busiest = min(range(len(att)), key=att.__getitem__)   # the bench's per-call figure: the most reduced variant
            trial.call_speedup = statistics.median(speed.per_repeat_speedups(times["dense"], vt[busiest]))
            steps = len(run.per_step)
            trial.attention_flops = sum(att[v] for v in run.per_step) / (steps * dense.attention)
            trial.flops = sum(fl[v].whole for v in run.per_step) / (steps * dense.whole)


def tune(bm, settings: TuneSettings, log=print) -> TuneResult:
    """The fastest candidate meeting settings.min_psnr (see the module docstring for the search)."""
    t0 = time.monotonic()
    tuner = Tuner(bm, settings, log)
    feasible = []
    for method in settings.methods:
        for scope in settings.scopes:
            for prop in settings.prop_attn:
                log(f"{method} / {scope}{' / prop_attn' if prop else ''}: largest ratio with median PSNR >= "
                    f"{tuner.threshold:g} dB")
                trial = tuner.largest_ratio(method, scope, prop)
                if trial is not None:
                    feasible.append(trial)
    if not tuner.trials:
        raise TuneError(f"--minutes {settings.minutes:g} ran out before the first configuration was measured "
                        f"(setting up and sampling dense took {time.monotonic() - t0:.0f} s); raise --minutes")
    if not feasible:
        tried = "; ".join(f"{t.candidate.label}: {t.median_psnr:.2f} dB" for t in tuner.trials.values())
        raise TuneError(f"--min-psnr {settings.min_psnr:g} (+ --margin-db {settings.margin:g}): no configuration of "
                        f"methods {settings.methods} in scopes {settings.scopes} reaches it on {settings.seeds} "
                        f"calibration seeds ({tried}); lower the target or the margin, raise --dense-fraction or "
                        "add methods / scopes")
    tuner.time_trials(feasible)
    for trial in sorted(feasible, key=lambda t: -t.run_speedup)[:2]:
        if tuner.out_of_time():
            break
        log(f"refining {trial.candidate.label} ({trial.run_speedup:.2f}x)")
        tuner.refine(trial)
    finalists = [t for t in tuner.trials.values() if t.median_psnr >= tuner.threshold]
    tuner.time_trials(finalists)
    best = max(finalists, key=lambda t: t.run_speedup)
    if best.run_speedup <= 1.0:
        raise slower_than_dense(bm, settings, best, len(finalists))
    return TuneResult(best, list(tuner.trials.values()), time.monotonic() - t0, tuner.out_of_time())


def slower_than_dense(bm, settings: TuneSettings, fastest: Trial, meeting: int) -> TuneError:
    """The error for a target that only schedules slower than dense meet: nothing is written."""
    tokens = f" at {bm.image_tokens} image tokens" if getattr(bm, "image_tokens", None) else ""
    return TuneError(
        f"--min-psnr {settings.min_psnr:g} (+ --margin-db {settings.margin:g}) cannot pay on {bm.name}{tokens}: "
        f"{meeting} configuration(s) meet it, the fastest ({fastest.candidate.label}) runs at "
        f"{fastest.run_speedup:.2f}x of dense, no faster than the dense model; nothing written. Lower the target, "
        "tune a larger resolution (e.g. small-dit:64), or keep the dense model")


# ------------------------------------------------------------------------------------------------- command
def add_subcommands(sub) -> None:
    from ..cli_args import finite_float, float_in, name_list, output_file, positive_int

    t = sub.add_parser("tune", help="the fastest schedule whose median PSNR on calibration seeds meets a target",
                       description=__doc__.split("\n\n")[0])
    t.add_argument("model", nargs="?", default="small-dit", help="small-dit[:RES] (a model the search can sample)")
    t.add_argument("--min-psnr", type=finite_float, required=True, help="median PSNR (dB) against dense to keep")
    t.add_argument("--methods", type=name_list(_methods), default=["dito", "coredit", "tome"])
    t.add_argument("--scopes", type=name_list(_scopes), default=["attention", "attention+proj", "block"])
    t.add_argument("--steps", type=positive_int, default=20)
    t.add_argument("--seeds", type=positive_int, default=6, help="calibration samples (seeds 1000, 1001, ...)")
    t.add_argument("--margin-db", type=float_in(0.0, 100.0), default=1.0,
                   help="a candidate must reach --min-psnr plus this on the calibration seeds")
    t.add_argument("--dense-fraction", type=float_in(0.0, 1.0, hi_open=True), default=0.2,
                   help="dense prefix the search starts from (refinement may shorten it)")
    t.add_argument("--prop-attn", choices=sorted(PROP_ATTN), default="both",
                   help="proportional attention in the candidates: off, on, or both searched (default)")
    t.add_argument("--repeats", type=positive_int, default=3, help="interleaved timing repeats")
    t.add_argument("--minutes", type=float_in(0.1, 1e4), default=20.0, help="search budget (the best so far is kept)")
    t.add_argument("-o", "--out", type=output_file, default="tuned.yaml")
    t.set_defaults(fn=cmd_tune)


def _methods() -> list[str]:
    from ..methods import METHODS

    return sorted(METHODS)


def _scopes() -> list[str]:
    from ..bench.runner import known_scopes

    return known_scopes()


def cmd_tune(args) -> int:
    import platform
    from datetime import date

    from ..model_specs import resolve_model
    from . import write_schedule

    settings = TuneSettings(min_psnr=args.min_psnr, methods=args.methods, scopes=args.scopes, steps=args.steps,
                            seeds=args.seeds, margin=args.margin_db, dense_fraction=args.dense_fraction,
                            prop_attn=PROP_ATTN[args.prop_attn], repeats=args.repeats,
                            minutes=args.minutes)
    bm = resolve_model(args.model)  # a BenchModelError names the accepted spellings
    res = tune(bm, settings)
    b = res.best
    doc = b.candidate.schedule() | {"num_steps": settings.steps}
    info = {"target": f"median PSNR >= {settings.min_psnr:g} dB + {settings.margin:g} dB margin against dense on "
                      "calibration seeds "
                      f"{CALIBRATION_SEED0}..{CALIBRATION_SEED0 + settings.seeds - 1}, {settings.steps} steps",
            "measured": f"median PSNR {b.median_psnr:.2f} dB (min {min(b.psnr):.2f}), run speedup {b.run_speedup:.2f}x "
                        f"[{min(b.run_speedups):.2f}-{max(b.run_speedups):.2f} over {len(b.run_speedups)} repeats], "
                        f"per-call {b.call_speedup:.2f}x, self-attention FLOPs over the run {b.attention_flops:.3f}, "
                        f"all FLOPs {b.flops:.3f}",
            "searched": f"{len(res.trials)} configurations in {res.seconds:.0f} s"
                        + (" (stopped at --minutes)" if res.timed_out else ""),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"}
    write_schedule(doc, info, args.out, "ditreduce " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["tune"]
                   else f"tune {args.model} --min-psnr {args.min_psnr:g}")
    print(f"best: {b.candidate.label}: median PSNR {b.median_psnr:.2f} dB, run speedup {b.run_speedup:.2f}x "
          f"-> {args.out}")
    return 0
