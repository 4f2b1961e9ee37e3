"""Bench outputs: results.json (versioned pydantic schema), a markdown table, the Pareto plot and the
image grid. Everything here reads a `BenchResults`; nothing measures."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


class _Rec(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Stat(_Rec):
    median: float
    min: float
    max: float
    n: int


class FlopsRecord(_Rec):
    """FlopCounterMode counts. Per call: the busiest reduced variant (most tokens removed). Run: summed
    over the steps of one generation, each step with its own variant."""

    whole_dense: int
    whole_reduced: int
    attention_dense: int
    attention_reduced: int
    run_whole_dense: int
    run_whole_reduced: int
    run_attention_dense: int
    run_attention_reduced: int
    whole_ratio: float          # run_whole_reduced / run_whole_dense
    attention_ratio: float      # run_attention_reduced / run_attention_dense
    ideal_speedup: float        # run_whole_dense / run_whole_reduced

    @property
    def call_ideal_speedup(self) -> float:
        """The per-call FLOPs-ideal: dense ÷ the busiest variant's whole-model FLOPs (the run's ideal also
        weighs steps that run other variants: a dense prefix, DiTo's prime and match steps)."""
        return self.whole_dense / self.whole_reduced


class TimingRecord(_Rec):
    """Seconds per transformer call, interleaved repeats in one process; speedups per repeat."""

    dense_baseline: str         # what the dense times are: "eager module" or the backend's dense
    dense_s: Stat
    reduced_s: Stat             # busiest variant
    call_speedup: Stat          # dense / busiest variant, per repeat
    run_speedup: Stat           # steps × dense / Σ_steps variant time, per repeat
    achieved_over_ideal: float  # run_speedup.median / flops.ideal_speedup
    repeats: int
    dense_times: list[float]            # raw seconds per repeat (the speedups are computed from these)
    variant_times: list[list[float]]    # [variant][repeat]; variant of each step: Row.per_step_variant
    busiest_variant: int
    graph_speedup: Stat | None = None   # dense / the captured graph at ratio 0 (graph cleanup alone), per repeat
    clock: str = "time.perf_counter"    # or "cuda events" (--device cuda)


class MemoryRecord(_Rec):
    what: str = "peak bytes of live CPU tensor storages created during one call (TorchDispatchMode tracker)"
    dense_peak_bytes: int | None
    reduced_peak_bytes: int | None
    param_bytes: int


class QualityRecord(_Rec):
    psnr_db: Stat
    ssim: Stat
    seeds: list[int]
    steps: int
    res: int
    guidance: float
    sample_s_dense: float
    sample_s_reduced: float
    psnr_per_seed: list[float] | None = None   # in the order of `seeds` (their mean, worst seed, ...)
    ssim_per_seed: list[float] | None = None


class Row(_Rec):
    model: str
    image_tokens: int | None
    blocks: int | None
    method: str
    scope: str
    backend: str
    nominal_ratio: float
    ratio: float
    schedule: dict
    steps: int
    variants: int | None = None
    per_step_variant: list[int] | None = None
    capture_s: float | None = None
    compile_s: float | None = None   # building every variant and its first call (rewrite / compile)
    flops: FlopsRecord | None = None
    timing: TimingRecord | None = None
    memory: MemoryRecord | None = None
    quality: QualityRecord | None = None
    error: str | None = None
    config: str | None = None                   # the --params set or the --schedule file of this configuration
    max_abs_diff_to_eager: float | None = None  # a non-eager backend: busiest variant's output vs eager's

    @property
    def series(self) -> str:
        """The method, and its parameter set or schedule file: one curve of the plots, one name in the tables."""
        return self.method if not self.config else f"{self.method} [{self.config}]"

    @property
    def label(self) -> str:
        return f"{self.series} {self.scope} r={self.ratio:g}"


class MatchedRatio(_Rec):
    method: str
    scope: str
    exponent: float             # attention FLOPs ∝ (1 − r)^exponent, measured on the probe
    reduces: Literal["q+kv", "kv"]
    ratios: dict[str, float]    # nominal ratio -> the ratio run


class BenchResults(_Rec):
    schema_version: Literal[1] = SCHEMA_VERSION
    ditreduce_version: str
    created_utc: str
    command: list[str]
    machine: dict
    settings: dict
    equal_flops: bool
    matched: list[MatchedRatio]
    models: list[dict]
    rows: list[Row]
    process_peak_rss_bytes: int

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "BenchResults":
        return cls.model_validate_json(Path(path).read_text())


# ---------------------------------------------------------------------------------------------- markdown
def _fmt_stat(s: Stat | None, unit: str = "×") -> str:
    return "–" if s is None else f"{s.median:.2f}{unit} [{s.min:.2f}–{s.max:.2f}]"


def _mb(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:.0f}"


def _ideals(r) -> str:
    """The speed table's FLOPs-ideal cells: `call / run` ideal speedup, then `call / run` achieved over it."""
    f, t = r.flops, r.timing
    call = t.call_speedup.median / f.call_ideal_speedup
    return f"{f.call_ideal_speedup:.2f}× / {f.ideal_speedup:.2f}× | {call:.2f} / {t.achieved_over_ideal:.2f}"


PSNR_TARGETS = (30.0, 27.0, 24.0)


def fastest_at_quality(rows: list[Row], targets=PSNR_TARGETS) -> list[tuple[float, str, Row | None]]:
    """(target dB, method, the row) for each target and method: of the method's configurations whose median
    PSNR is at least the target, the one with the highest median run speedup (None: none reaches it)."""
    timed = [r for r in rows if r.quality is not None and r.timing is not None and r.error is None]
    methods = list(dict.fromkeys(r.series for r in timed))
    out = []
    for target in targets:
        for m in methods:
            ok = [r for r in timed if r.series == m and r.quality.psnr_db.median >= target]
            out.append((target, m, max(ok, key=lambda r: r.timing.run_speedup.median) if ok else None))
    return out


def equal_quality_markdown(res: BenchResults) -> list[str]:
    picks = fastest_at_quality(res.rows)
    if not picks:
        return []
    out = ["Speed at equal quality: per method, the fastest configuration whose median PSNR reaches the target:\n",
           "| PSNR ≥ | method | scope | ratio | run speedup | call speedup | whole FLOPs | PSNR dB | SSIM |",
           "|---|---|---|---|---|---|---|---|---|"]
    for target, m, r in picks:
        if r is None:
            out.append(f"| {target:g} | {m} | – | – | no configuration reaches it | | | | |")
            continue
        out.append(f"| {target:g} | {m} | {r.scope} | {r.ratio:g} | {_fmt_stat(r.timing.run_speedup)} | "
                   f"{_fmt_stat(r.timing.call_speedup)} | {r.flops.whole_ratio:.3f} | "
                   f"{r.quality.psnr_db.median:.2f} | {r.quality.ssim.median:.3f} |")
    return out + [""]


TABLES = ("equal-quality", "matched", "quality", "speed", "errors")


def markdown(res: BenchResults, tables: tuple[str, ...] | list[str] = TABLES, footer: bool = True) -> str:
    """The results as markdown tables (those named in `tables`, in TABLES order) and a one-line footer."""
    out = equal_quality_markdown(res) if "equal-quality" in tables else []
    if res.matched and "matched" in tables:
        out.append("Matched ratios (equal self-attention FLOPs; exponent p in FLOPs ∝ (1−r)^p measured on a probe):\n")
        noms = sorted({k for m in res.matched for k in m.ratios})
        out.append("| method | scope | reduces | p | " + " | ".join(f"nominal {n}" for n in noms) + " |")
        out.append("|---|---|---|---|" + "---|" * len(noms))
        for m in res.matched:
            out.append(f"| {m.method} | {m.scope} | {m.reduces} | {m.exponent:.2f} | " +
                       " | ".join(f"{m.ratios.get(n, float('nan')):g}" for n in noms) + " |")
        out.append("")
    q = [r for r in res.rows if r.quality is not None]
    if q and "quality" in tables:
        out.append("Quality vs dense (same seeds):\n")
        out.append("| model | method | scope | backend | ratio | attn FLOPs | whole FLOPs | run speedup | PSNR dB | SSIM |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in q:
            out.append(f"| {r.model} | {r.series} | {r.scope} | {r.backend} | {r.ratio:g} | "
                       f"{r.flops.attention_ratio:.3f} | {r.flops.whole_ratio:.3f} | "
                       f"{_fmt_stat(r.timing.run_speedup if r.timing else None)} | "
                       f"{r.quality.psnr_db.median:.2f} (min {r.quality.psnr_db.min:.2f}) | "
                       f"{r.quality.ssim.median:.3f} (min {r.quality.ssim.min:.3f}) |")
        out.append("")
    s = [r for r in res.rows if r.timing is not None]
    if s and "speed" in tables:
        out.append("Speed (seconds per transformer call; speedups per interleaved repeat: median [min–max]):\n")
        out.append("| model | tokens | scope | backend | method | ratio | attn FLOPs | whole FLOPs | dense s | "
                   "call speedup | run speedup | ideal call / run | achieved/ideal call / run | peak MiB dense→red. | variants | "
                   "capture s | compile s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in s:
            m = r.memory
            out.append(f"| {r.model} | {r.image_tokens} | {r.scope} | {r.backend} | {r.series} | {r.ratio:g} | "
                       f"{r.flops.attention_ratio:.3f} | {r.flops.whole_ratio:.3f} | {r.timing.dense_s.median:.3f} | "
                       f"{_fmt_stat(r.timing.call_speedup)} | {_fmt_stat(r.timing.run_speedup)} | "
                       f"{_ideals(r)} | "
                       f"{_mb(m.dense_peak_bytes if m else None)}→{_mb(m.reduced_peak_bytes if m else None)} | "
                       f"{r.variants} | {r.capture_s:.1f} | {r.compile_s:.1f} |")
        out.append("")
        graph = {(r.model, r.backend): r.timing.graph_speedup for r in s if r.timing.graph_speedup is not None}
        for (model, backend), g in graph.items():
            out.append(f"- {model}, {backend}: the captured graph at ratio 0 runs at {_fmt_stat(g)} of the dense "
                       "baseline (no-op copies removed at capture; the speedups above include it)")
        diffs = [r for r in s if r.max_abs_diff_to_eager is not None]
        out += [f"- {r.model} {r.label} {r.backend}: max |output − eager output| {r.max_abs_diff_to_eager:.1e}"
                for r in diffs]
        if graph or diffs:
            out.append("")
    errs = [r for r in res.rows if r.error]
    if errs and "errors" in tables:
        out.append("Configurations that failed (named errors):\n")
        out += [f"- {r.model} {r.label} {r.backend}: {r.error}" for r in errs]
        out.append("")
    if footer:
        steps = res.settings.get("steps")
        out.append(f"{steps} steps, the first {res.settings.get('dense_fraction', 0):.0%} of them dense; "
                   f"{machine_line(res)}.")
    return "\n".join(out) + "\n"


def machine_line(res: BenchResults) -> str:
    """Where and how it ran: device (GPU name or CPU threads), dtype, torch."""
    m, st = res.machine, res.settings
    device = st.get("device", "cpu")
    where = f"{m.get('gpu', device)} ({device})" if device.startswith("cuda") else \
        f"{m.get('threads')} threads on {m.get('cpu')}"
    return f"{where}; {st.get('dtype', 'fp32')}; torch {m.get('torch')}"


# ---------------------------------------------------------------------------------------------- docs blocks
def command_line(res: BenchResults) -> str:
    """The command as a user types it: `ditreduce bench ...` whatever the entry point was."""
    import shlex

    args = list(res.command)
    if "bench" in args:
        args = args[args.index("bench") + 1:]
    return "ditreduce bench " + shlex.join(args)


def docs_block(res: BenchResults, name: str, tables=TABLES) -> str:
    """A marked block for a docs page: the command, machine and date, then the tables."""
    body = markdown(res, tables, footer=False).rstrip("\n")
    steps = res.settings.get("steps")
    return (f"<!-- bench:{name} -->\n<!-- generated by `ditreduce bench-docs`; edits inside this block are "
            f"overwritten -->\n```bash\n{command_line(res)}\n```\n\n"
            f"Measured {res.created_utc[:10]} on {machine_line(res)}; {steps} steps, the first "
            f"{res.settings.get('dense_fraction', 0):.0%} of them dense; ditreduce {res.ditreduce_version}.\n\n"
            f"{body}\n<!-- /bench:{name} -->")


def update_docs(md_path: str | Path, name: str, res: BenchResults, tables=TABLES) -> bool:
    """Rewrite the block between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in md_path from res;
    without those markers the block is appended at the end. True when an existing block was replaced."""
    import re

    path = Path(md_path)
    text = path.read_text() if path.exists() else ""
    block = docs_block(res, name, tables)
    pat = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pat.search(text):
        path.write_text(pat.sub(lambda _: block, text, count=1))
        return True
    path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + ("\n" if text else "") + block + "\n")
    return False


# ---------------------------------------------------------------------------------------------- plots
def pareto_series(res: BenchResults) -> dict[str, list[tuple[float, float, float, float]]]:
    """{method: [(run speedup median, min, max, quality)]} sorted by speedup, for the first backend of the
    run. Quality is PSNR (dB) where the model was sampled, else the FLOPs-ideal speedup (speed-only runs)."""
    backend = (res.settings.get("backends") or ["eager"])[0]   # one backend per plot: the first asked for
    rows = [r for r in res.rows if r.timing is not None and r.flops is not None and r.backend == backend]
    use_psnr = any(r.quality is not None for r in rows)
    series: dict[str, list] = {}
    for r in rows:
        if use_psnr and r.quality is None:
            continue
        y = r.quality.psnr_db.median if use_psnr else r.flops.ideal_speedup
        s = r.timing.run_speedup
        series.setdefault(r.series, []).append((s.median, s.min, s.max, y))
    return {m: sorted(v) for m, v in series.items()}


def pareto_front(pts: list[tuple[float, float, float, float]]) -> list[tuple[float, float, float, float]]:
    """The points no other point beats on both speed and quality, by increasing speed."""
    front, best = [], float("-inf")
    for p in sorted(pts, key=lambda p: (-p[0], -p[3])):  # fastest first
        if p[3] > best:
            front.append(p)
            best = p[3]
    return front[::-1]


def pareto_figure(res: BenchResults):
    """One Line2D per method (quality vs run speedup); min–max speedups as horizontal LineCollections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = pareto_series(res)
    use_psnr = any(r.quality is not None for r in res.rows)
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for method, pts in series.items():
        fx, _, _, fy = zip(*pareto_front(pts))
        (line,) = ax.plot(fx, fy, marker="o", label=method)  # the method's front: its best trade-offs
        xs, lo, hi, ys = zip(*pts)
        ax.scatter(xs, ys, s=12, color=line.get_color(), alpha=0.5)  # every configuration (scopes, ratios)
        ax.hlines(ys, lo, hi, colors=line.get_color(), alpha=0.3)
    backend = (res.settings.get("backends") or ["eager"])[0]
    for top, targets in (_fastest_per_target(res, backend) if use_psnr else []):
        _star(ax, top.timing.run_speedup.median, top.quality.psnr_db.median,
              f"≥{'/'.join(f'{t:g}' for t in targets)} dB: {_short_name(top)} {top.timing.run_speedup.median:.2f}×")
    ax.set_xlabel("run speedup over dense (median, bar: min–max of repeats)")
    ax.set_ylabel("PSNR vs dense, dB (median over seeds)" if use_psnr
                  else "FLOPs-ideal speedup (dense ÷ reduced FLOPs)")
    ax.set_title(pareto_title(res, use_psnr, backend), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if series:   # right of the axes, after the layout: it never covers a point or the y axis; the saved
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)   # image grows
    return fig


def _fastest_per_target(res: BenchResults, backend: str) -> list[tuple[Row, list[float]]]:
    """[(row, the PSNR targets it is the fastest configuration of)]: one star per row, however many targets."""
    rows = [r for r in res.rows if r.backend == backend]
    tops: dict[int, tuple[Row, list[float]]] = {}
    for target in PSNR_TARGETS:
        best = [r for _, _, r in fastest_at_quality(rows, (target,)) if r]
        if best:
            top = max(best, key=lambda r: r.timing.run_speedup.median)   # the fastest method at this quality
            tops.setdefault(id(top), (top, []))[1].append(target)
    return list(tops.values())


def _short_name(row: Row) -> str:
    """The row's series, without the path of a schedule file (its stem, the method's name, says which)."""
    return row.method if row.config and Path(row.config).stem == row.method else row.series


def pareto_title(res: BenchResults, use_psnr: bool, backend: str) -> str:
    """What the plot shows: PSNR against run speedup, or (a run without quality) the FLOPs-ideal speedup."""
    models = ", ".join(sorted({r.model for r in res.rows}))
    y = "PSNR" if use_psnr else "FLOPs-ideal speedup (no quality measured)"
    return f"{models}, {backend}: {y} vs run speedup"


def _star(ax, x: float, y: float, text: str) -> None:
    """A starred point with its label, written towards the middle of the plot so that it stays inside it."""
    lo, hi = ax.get_xlim()
    left = x > (lo + hi) / 2
    ax.scatter([x], [y], marker="*", s=140, color="black", zorder=5)
    ax.annotate(text, (x, y), fontsize=7, xytext=(-4 if left else 4, 4), textcoords="offset points",
                ha="right" if left else "left")


def save_pareto(res: BenchResults, path: str | Path) -> None:
    """pareto.png: the figure cropped to everything drawn (the legend outside the axes, long labels)."""
    fig = pareto_figure(res)   # selects matplotlib's Agg backend
    import matplotlib.pyplot as plt

    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def save_image_grid(rows: list[tuple[str, "object"]], path: str | Path, col_titles: list[str] | None = None) -> None:
    """rows: [(label, images (n, 3, H, W) in [-1, 1])]; one row per label, one column per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..smalldit.metrics import to_unit

    n = max(len(imgs) for _, imgs in rows)
    label_w = 1.5  # inches for the row labels
    top = 0.3 if col_titles else 0.0  # inches for the column titles
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + label_w, 1.2 * len(rows) + 0.1 + top), dpi=110,
                             squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(to_unit(imgs[j]), interpolation="nearest")
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    for j, title in enumerate((col_titles or [])[:n]):
        axes[0][j].set_title(title, fontsize=7)
    fig.subplots_adjust(left=label_w / (1.2 * n + label_w), right=0.99,
                        top=1 - (top + 0.02) / (1.2 * len(rows) + 0.1 + top), bottom=0.01, wspace=0.03, hspace=0.05)
    fig.savefig(path)
    plt.close(fig)


def write_outputs(res: BenchResults, out_dir: str | Path, grid_rows=None, grid_titles=None) -> dict[str, Path]:
    """results.json, results.md, pareto.png and (when samples exist) grid.png under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "pareto": out / "pareto.png"}
    res.save(paths["json"])
    paths["markdown"].write_text(markdown(res))
    save_pareto(res, paths["pareto"])
    if grid_rows:
        paths["grid"] = out / "grid.png"
        save_image_grid(grid_rows, paths["grid"], grid_titles)
    return paths
