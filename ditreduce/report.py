"""Pass 5 — inspect: one record per attention site (and per unmatched attention module)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .flops import graph_flops
from .methods import get_method
from .passes.rewrite import scope_refusal, site_region
from .regions import attention_flops
from .schedules.lower import NumStepsUnknown, eligible, step_key


@dataclass
class SiteRecord:
    block: int | None
    module: str
    kind: str
    image_tokens: int
    text_tokens: int        # -1: the text length is only known at run time (read per sample)
    grid: tuple | None
    reduced: bool
    scope: str              # the scope the site really got ("-" when not reduced)
    scope_note: str | None  # why it got a narrower scope than the schedule asked for
    skip_reason: str | None
    schedule: str           # method:ratio per step, compressed ("0-1 none, 2-19 uniform:0.5")
    flops_dense: int
    flops_reduced: int      # at the busiest variant (most tokens removed)
    owners: tuple = ()      # other modules whose q/k/v/out projections feed this attention

    def as_dict(self) -> dict:
        return asdict(self)


class Report(list):
    """A list of SiteRecord that prints as a table."""

    variants: int = 1
    notes: list
    observed: str | None = None  # the steps the latest generation really ran and each step's variant
    run_flops: tuple[int, int] | None = None  # attention (dense, reduced) summed over the steps of a run
    model_flops: tuple[int, int] = (0, 0)     # whole model, one call: dense, busiest variant
    run_model_flops: tuple[int, int] | None = None  # whole model, summed over the run

    attention_flops: tuple[int, int] | None = None  # counted on the graphs (every scope: cross q in `block` too)

    def totals(self) -> tuple[int, int]:
        """Attention FLOPs of one call: dense, and at the variant that removes the most tokens."""
        if self.attention_flops is not None:
            return self.attention_flops
        return sum(r.flops_dense for r in self), sum(r.flops_reduced for r in self)

    def __str__(self) -> str:
        cols = ["block", "module", "kind", "image", "text", "grid", "reduced", "scope", "schedule",
                "attn GFLOP dense→red.", "skip reason / scope note"]
        rows = []
        for r in self:
            grid = "x".join(map(str, r.grid)) if r.grid else "-"
            fl = f"{r.flops_dense / 1e9:.4g}→{r.flops_reduced / 1e9:.4g}" if r.flops_dense else "-"
            module = r.module + (f" (projections: {', '.join(r.owners)})" if r.owners else "")
            rows.append([str(r.block if r.block is not None else "-"), module, r.kind, str(r.image_tokens),
                         "per sample" if r.text_tokens < 0 else str(r.text_tokens), grid, "yes" if r.reduced else "no", r.scope, r.schedule, fl,
                         r.skip_reason or r.scope_note or ""])
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
        d, red = self.totals()
        out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
        if d:
            out.append(f"attention FLOPs per call dense {d / 1e9:.4g} G → reduced {red / 1e9:.4g} G "
                       f"({100 * (1 - red / d):.1f}% fewer); variants: {self.variants}")
        md, mr = self.model_flops
        if md:
            out.append(f"whole-model FLOPs per call dense {md / 1e9:.4g} G → reduced {mr / 1e9:.4g} G "
                       f"(FLOPs-ideal speedup {md / mr:.2f}x)")
        if self.run_flops and self.run_flops[0]:
            rd, rr = self.run_flops
            line = f"over the run: {100 * (1 - rr / rd):.1f}% fewer attention FLOPs"
            if self.run_model_flops:
                rmd, rmr = self.run_model_flops
                line += f", {100 * (1 - rmr / rmd):.1f}% fewer whole-model FLOPs"
            out.append(line)
        if self.observed:
            out.append(self.observed)
        out += [f"note: {n}" for n in getattr(self, "notes", [])]
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)


def _site_flops(site, cfg) -> tuple[int, int]:
    """Attention FLOPs of a site, dense and under cfg; text of run-time length counts as no tokens."""
    q_len, kv_len = (lay.length if n < 0 and lay is not None else n
                     for n, lay in ((site.q_len, site.layout), (site.kv_len, site.kv_layout)))
    dense = attention_flops(site.batch, site.heads, q_len, kv_len, site.head_dim, site.v_dim)
    if cfg is None:
        return dense, dense
    removed = cfg.n - cfg.k
    q = q_len - (removed if get_method(cfg.method).reduces_q else 0)
    kv = kv_len - removed
    return dense, attention_flops(site.batch, site.heads, q, kv, site.head_dim, site.v_dim)


def _compress(per_step: list[str]) -> str:
    out, start = [], 0
    for i in range(1, len(per_step) + 1):
        if i == len(per_step) or per_step[i] != per_step[start]:
            rng = f"{start}" if i - 1 == start else f"{start}-{i - 1}"
            out.append(f"{rng} {per_step[start]}")
            start = i
    return ", ".join(out)


def observed(gen) -> str | None:
    """'last generation: N calls, steps ...: variant per step' of a generation that ran (None: none ran)."""
    if gen is None or not gen.history:
        return None
    per_step = {}
    for c in gen.history:
        per_step.setdefault(c.step, c.variant)
    steps = [s for s in per_step if s is not None]
    if not steps:
        return f"last generation: {len(gen.history)} calls without a step (no timestep), variant {gen.history[-1].variant}"
    runs = _compress([per_step[s] for s in range(max(steps) + 1)] if steps == list(range(max(steps) + 1))
                     else [per_step[s] for s in steps])
    return f"last generation: {len(gen.history)} calls on {len(steps)} steps observed: {runs}"


def _label(cfg) -> str:
    return "dense" if cfg is None else f"{cfg.method}:{cfg.ratio:g}"


def build_report(model, cap, num_steps: int | None) -> Report:
    sched = model.schedule
    if num_steps is not None:
        plan = model.plan(cap, num_steps)   # with method phases (DiTo: prime / match / reduce variants)
        keys, per_step = list(plan.keys), list(plan.per_step)
    else:
        keys, per_step = _keys_without_a_length(sched, cap.sites), None
    rep = Report()
    rep.variants = len(keys)
    rep.notes = list(cap.notes)
    if num_steps is None and sched.needs_num_steps:
        rep.notes.append(f"the number of steps is unknown (no generation gave it yet) and the schedule's step_fraction "
                         f"rules need it: per call the busiest of the {len(keys)} configurations any run length gives "
                         "is shown; report(num_steps=N) (`ditreduce inspect --steps N`) gives the per-step plan and "
                         "the totals over the run")
    rep.observed = observed(model.generations.last)
    try:
        dense = graph_flops(cap.graph)
        per_key = {key: graph_flops(model.variant(cap, key), cap.graph) for key in keys}
    except Exception as e:  # noqa: BLE001 — data-dependent ops of the model itself: counted analytically below
        rep.notes.append(f"whole-model FLOPs not counted: the graph does not run on fake tensors ({type(e).__name__})")
        dense = per_key = None
    if per_key is not None:
        busiest = min(per_key.values(), key=lambda f: f.whole)
        rep.model_flops = (dense.whole, busiest.whole)
        rep.attention_flops = (dense.attention, min(f.attention for f in per_key.values()))
    elif per_step is not None:
        rep.run_flops = tuple(sum(_site_flops(s, keys[v][i])[j] for v in per_step for i, s in enumerate(cap.sites))
                              for j in (0, 1))
    if per_step is not None and per_key is not None:
        n = len(per_step)
        rep.run_flops = (dense.attention * n, sum(per_key[keys[v]].attention for v in per_step))
        rep.run_model_flops = (dense.whole * n, sum(per_key[keys[v]].whole for v in per_step))
    crossed = _cross_queries(cap.sites, keys)
    for i, site in enumerate(cap.sites):
        cfgs = [k[i] for k in keys]
        reduced_cfgs = [c for c in cfgs if c is not None]
        busiest = min(reduced_cfgs, key=lambda c: c.k) if reduced_cfgs else None
        dense, red = _site_flops(site, busiest)
        if per_step is not None:
            sched_txt = _compress([_label(keys[v][i]) for v in per_step])
        elif sched.needs_num_steps:
            sched_txt = "per step fraction: report(num_steps=N) lists the steps"
        elif sched.step_dependent:
            sched_txt = "per step: report(num_steps=N) lists it"
        else:
            sched_txt = "all steps " + _label(cfgs[0])
        why = eligible(site, sched)
        if why is None and not reduced_cfgs:
            why = "method none at every step"
        scope, note = "-", None
        if reduced_cfgs:
            plan = site_region(site, busiest)
            scope = "attention" if isinstance(plan, str) else plan.scope
            note = None
            if scope != busiest.scope:
                note = f"{busiest.scope} not applied: {scope_refusal(site, busiest)}"
        if site.name in crossed:   # a cross-attention whose queries run on a self-attention's kept tokens
            owner, cfg = crossed[site.name]
            scope, why, sched_txt = "attention+cross", None, f"queries: the kept tokens of {owner}"
            red = dense * cfg.k // cfg.n
        module = site.module or site.name
        text = -1 if site.run_time_text else site.text_tokens
        rep.append(SiteRecord(site.block, module, site.kind, site.image_tokens, text,
                              site.grid, bool(reduced_cfgs), scope, note, why, sched_txt if why is None else "-",
                              dense, red, tuple(o for o in site.owners if o != module)))
    for site in cap.sites:   # what the rewrite noted about a site (e.g. cfg: shared run per sample)
        rep.notes += [line for line in (f"{site.module or site.name}: {n}" for n in site.notes) if line not in rep.notes]
    for module, why in cap.unmatched.items():
        rep.append(SiteRecord(None, module, "unmatched", 0, 0, None, False, "-", None, why, "-", 0, 0))
    return rep


NOMINAL_STEPS = 1000   # a run long enough that every step_fraction rule of a schedule covers some step


def _keys_without_a_length(sched, sites) -> list:
    """The distinct per-step configurations of a schedule when the run's length is unknown: step 0's where
    the schedule needs no length, else those of a NOMINAL_STEPS run (each rule's configuration, whatever N)."""
    try:
        return [step_key(sched, sites, 0, None)]
    except NumStepsUnknown:
        return list(dict.fromkeys(step_key(sched, sites, s, NOMINAL_STEPS) for s in range(NOMINAL_STEPS)))


def _cross_queries(sites, keys) -> dict:
    """{cross site name: (self-attention module, busiest config)} for the cross-attentions an `attention+cross`
    region runs on its kept tokens (RegionPlan.extra)."""
    out = {}
    for i, site in enumerate(sites):
        reduced = [k[i] for k in keys if k[i] is not None]
        if not reduced:
            continue
        busiest = min(reduced, key=lambda c: c.k)
        plan = site_region(site, busiest)
        for extra in getattr(plan, "extra", ()):
            for name in extra.inner:
                out[name] = (site.module or site.name, busiest)
    return out
