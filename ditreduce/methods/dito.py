"""`dito` (DiTo, arXiv 2605.22011): ToMe-structured merging whose correspondences come from the
similarity of the site's attention OUTPUTS at the previous step, carried across steps as state.

Phases (static per variant; `DiTo.assign_phases` gives them to the steps of a run plan, schedules/plan.py):
  prime   dense attention (k = n) that emits the site's output `y` and zero selection counts. It runs at
          the dense step just before a site's first DiTo step (or, with no dense step before, at the
          first DiTo step itself): no previous output exists before it.
  match   correspondences from `y` of the previous step: cosine of each source to the destinations of
          the 3×3 windows around it (ToMe's tables: one destination per 2×2 window), score
          s = best − lam · count, the r = N − k best-scoring sources merge into their best destination.
          Emits y, the correspondences (merged, unmerged, arg) and count + 1 for every merged source.
  reduce  reuses the last correspondences (no similarity) and passes them on; emits y.
  tail    a reduce step that no later matching reads (after a run's last `match`): it carries only the
          correspondences and their Selection, no y and no counts, and refreshes nothing.
`y` is each token's last computed output: merged sources keep their previous value (dito_refresh).
A step is `match` every `interval` steps from the first DiTo step, and whenever k / params change; with the
whole run known (num_steps), the reduce steps of a configuration that no later matching reads are `tail`
steps (state liveness, DiTo.assign_phases: only where every reduce step of that configuration is one, so no
variant is added).

State per site (graph inputs `state.<site>.<name>`, outputs `state_out.<site>.<name>`):
  y [B, N, C] (model dtype)  count [B, S] float32  merged [B, r] int64  unmerged [B, S − r] int64
  arg [B, S] int64 (index 0..8 of the chosen destination window around each source);
  and, where the region merges (k < N), the matching's Selection (regions.Selection: kept, src, mw, wmix,
  sizes), so that a `reduce` step reads it instead of rebuilding it from the pairs every step (a rebuild
  costs 0.65 ms of a site's call under inductor, 1.2 ms eager, at 1024 tokens).
"""
from __future__ import annotations

import dataclasses

import torch
from annotated_types import Interval

from ..regions import Selection, identity_selection
from .base import Method, SiteContext, StateSpec, register_method
from .lattice import inverse_positions, share_cfg_halves, static_table
from .tome import _local_similarity, _split_sources, merge_selection, tables_on, tome_kept, tome_tables

PHASES = ("auto", "prime", "match", "reduce", "tail")
PAIR_STATE = ("merged", "unmerged", "arg")
SEL_STATE = ("kept", "src", "mw", "wmix", "sizes")   # the matching's Selection (its other fields are tables)


def state_names(phase: str, merges: bool) -> tuple[tuple, tuple]:
    """(state inputs, state outputs) of a site's variant in `phase`; `merges`: its region merges tokens
    (k < N, or forced), so the matching's Selection travels with the pairs."""
    carried = PAIR_STATE + (SEL_STATE if merges else ())
    ins = {"prime": (), "match": ("y", "count"), "reduce": ("y", "count") + carried, "tail": carried}[phase]
    outs = {"prime": ("y", "count"), "tail": carried}.get(phase, ("y", "count") + carried)
    return ins, outs


from ..errors import ScheduleError, StateError  # noqa: F401  (StateError re-exported)


def num_sources(lattice, seed: int = 0) -> int:
    return int(tome_tables(tuple(lattice), seed)["src_tok"].numel())


def state_shapes(phase: str, b: int, n: int, c: int, lattice, k: int, seed: int, dtype,
                 forced: bool = False) -> tuple[dict, dict]:
    """({name: (shape, dtype)} of the state inputs, same of the outputs) of one site in one phase."""
    s = num_sources(lattice, seed)
    r = min(n - k, s) if k < n else 0
    shapes = {"y": ((b, n, c), dtype), "count": ((b, s), torch.float32), "merged": ((b, r), torch.long),
              "unmerged": ((b, s - r), torch.long), "arg": ((b, s), torch.long)}
    merges = k < n or forced
    if merges:
        shapes.update(_selection_shapes(b, n, tuple(lattice), r, seed))
    ins, outs = state_names(phase, merges)
    return {x: shapes[x] for x in ins}, {x: shapes[x] for x in outs}


@static_table
def _selection_shapes(b: int, n: int, lattice: tuple, r: int, seed: int) -> dict:
    """{name: (shape, dtype)} of the SEL_STATE fields of a matching that merges r sources."""
    s = num_sources(lattice, seed)
    zeros = torch.zeros(b, s, dtype=torch.long)
    sel = merge_selection(tables_on(lattice, seed, "cpu"), zeros[:, :r], zeros[:, r:], zeros, n)
    return {name: (tuple(getattr(sel, name).shape), getattr(sel, name).dtype) for name in SEL_STATE}


# --- graph functions (FX call targets: pure tensor functions, static Python arguments) ------------
def dito_prime(like: torch.Tensor, *, lattice: tuple, seed: int) -> torch.Tensor:
    """Zero selection counts [B, S] for a batch like `like`."""
    return like.new_zeros(like.shape[0], num_sources(lattice, seed), dtype=torch.float32)


def dito_refresh(y_prev: torch.Tensor, y: torch.Tensor, sel: Selection) -> torch.Tensor:
    """The state `y`: each token's last COMPUTED output. Tokens that entered attention (kept) take this
    step's output; merged sources keep their previous one (their restored output is a copy of their
    destination's, whose cosine of 1 would make every later matching pick the same pairs again)."""
    n = y.shape[1]
    if sel.kept.shape[1] >= n:
        return y
    _, fresh = inverse_positions(sel.kept, n)
    return torch.where(fresh[..., None] > 0, y, y_prev)


def dito_match(y: torch.Tensor, count: torch.Tensor, pairs: torch.Tensor | None = None, *, lattice: tuple, k: int,
               seed: int, cfg: str, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(merged, unmerged, arg, count') from the previous outputs y [B, N, C] and counts [B, S]; `cfg: shared`
    shares between the CFG pairs `pairs` (lattice.cfg_pairs; None: every (i, i + B/2))."""
    b, n, _ = y.shape
    t = tables_on(lattice, seed, y.device)
    sims = _local_similarity(y, t)                                             # [B, S, 9]
    if cfg == "shared":
        sims = share_cfg_halves(sims, pairs)
    sims = torch.where(t["cvalid"], sims, torch.full_like(sims, -2.0))
    best, arg = sims.max(-1)
    score = best - lam * count if lam != 0.0 else best
    r = min(n - k, best.shape[1]) if k < n else 0
    merged, unmerged = _split_sources(score, r)
    mm = torch.zeros_like(count).scatter(1, merged, torch.ones(merged.shape, dtype=count.dtype, device=y.device))
    return merged, unmerged, arg, count + mm


def dito_selection(merged: torch.Tensor, unmerged: torch.Tensor, arg: torch.Tensor, *, n: int, lattice: tuple,
                   k: int, seed: int, forced: bool = False) -> Selection:
    """The region Selection of given correspondences (gathers and a plain scatter; no similarity). k = N is
    the identity selection unless forced (built inside regions.forced_regions()): then the matching's own."""
    if k >= n and not forced:
        return identity_selection(n, device=arg.device)
    return merge_selection(tables_on(lattice, seed, arg.device), merged, unmerged, arg, n)


def dito_stored_selection(kept: torch.Tensor, src: torch.Tensor, mw: torch.Tensor, wmix: torch.Tensor,
                          sizes: torch.Tensor, *, lattice: tuple, seed: int) -> Selection:
    """A `reduce` step's Selection: the matching's, carried as state (SEL_STATE), with the tables it shares
    with every matching of the lattice (msrc, wtok) as constants: no op runs."""
    t = tables_on(lattice, seed, kept.device)
    return Selection(kept, src, None, t["msrc"], mw, t["wtok"], wmix, sizes)


def dito_prime_selection(*, n: int, lattice: tuple, seed: int, device: torch.device, forced: bool = False) -> Selection:
    """The prime step's selection: every token kept. Forced (built inside regions.forced_regions()): a
    matching that merges no source, through merge_selection."""
    if not forced:
        return identity_selection(n, device=device)
    s = num_sources(lattice, seed)
    none = torch.zeros(1, 0, dtype=torch.long, device=device)
    every = torch.arange(s, device=device)[None]
    return dito_selection(none, every, torch.zeros_like(every), n=n, lattice=lattice, k=n, seed=seed, forced=True)


def pairs(merged: torch.Tensor, arg: torch.Tensor, lattice, seed: int = 0) -> torch.Tensor:
    """[B, r, 2] (source token, destination token) of the merged sources: the matching's pair set."""
    t = tome_tables(tuple(lattice), seed)
    merged, arg = merged.cpu(), arg.cpu()
    b, s = arg.shape
    dst_list = t["cand"].expand(b, s, 9).gather(2, arg[..., None])[..., 0]   # [B, S] dst-list index
    dst = t["dst_tok"][dst_list].gather(1, merged)
    return torch.stack([t["src_tok"][merged], dst], -1)


# --- the method and its phase pass -----------------------------------------------------------------
@register_method
class DiTo(Method):
    name = "dito"
    preferred = 0   # the bench's order: docs/benchmarks.md, at equal attention FLOPs
    static = False
    stateful = True
    max_ratio = 0.75
    defaults = {"interval": 2, "lam": 0.3, "seed": 0, "cfg": "shared", "phase": "auto"}
    choices = {"cfg": ("per_sample", "shared"), "phase": PHASES}
    # interval: steps between matchings (1 = every step); lam: penalty per earlier merge of a source
    ranges = {"interval": Interval(ge=1, le=10_000), "lam": Interval(ge=0.0, le=1_000.0)}

    def kept_count(self, n, k, lattice):
        return tome_kept(n, k, tuple(lattice))

    def select(self, x, lattice, k, pairs=None):
        raise StateError("dito selects from its state (the previous step's outputs): it has no stateless select; "
                         "the rewrite calls DiTo.selection with the variant's state")

    def _phase(self) -> str:
        phase = self.params["phase"]
        if phase == "auto":
            raise StateError("a dito config reached rewrite without a phase; dito variants come from the run plan "
                             "(ditreduce.schedules.plan)")
        return phase

    def state_spec(self, ctx: SiteContext) -> StateSpec:
        phase = self._phase()
        ins, outs = state_shapes(phase, ctx.batch, ctx.n, ctx.channels, ctx.lattice, ctx.k, self.params["seed"],
                                 ctx.dtype, ctx.forced)
        observed = {"prime": ("y", "count"), "tail": ()}.get(phase, ("y",))
        return StateSpec(ins, {x: v for x, v in outs.items() if x not in observed},
                         {x: v for x, v in outs.items() if x in observed})

    def selection(self, x, state, ctx: SiteContext, pairs=None):
        """prime: every token kept; match: correspondences from the previous outputs and counts; reduce / tail:
        the carried correspondences (and their carried Selection) passed on as they came."""
        p, phase = self.params, self._phase()
        lattice, k, seed, n = tuple(ctx.lattice), ctx.k, p["seed"], ctx.n
        if phase == "prime":
            return dito_prime_selection(n=n, lattice=lattice, seed=seed, device=ctx.device, forced=ctx.forced), {}
        if phase == "match":
            merged, unmerged, arg, count = dito_match(state["y"], state["count"], pairs, lattice=lattice, k=k,
                                                      seed=seed, cfg=p["cfg"], lam=float(p["lam"]))
            out = {"merged": merged, "unmerged": unmerged, "arg": arg, "count": count}
        else:
            merged, unmerged, arg = state["merged"], state["unmerged"], state["arg"]
            out = {name: state[name] for name in PAIR_STATE + ("count",) if name in state}
        if phase != "match" and "kept" in state:
            sel = dito_stored_selection(*(state[name] for name in SEL_STATE), lattice=lattice, seed=seed)
        else:
            sel = dito_selection(merged, unmerged, arg, n=n, lattice=lattice, k=k, seed=seed, forced=ctx.forced)
        if k < n or ctx.forced:   # the matching's Selection travels with the pairs
            out.update({name: getattr(sel, name) for name in SEL_STATE})
        return sel, out

    def observe(self, y, state, sel, ctx: SiteContext):
        """The site's output tokens y [B, N, C] become state `y` (merged sources keep their previous output);
        a prime step also starts the counts. A tail step carries no y: no later matching reads it."""
        phase = self._phase()
        if phase == "tail":
            return {}
        if "y" in state:
            y = dito_refresh(state["y"], y, sel)
        out = {"y": y}
        if phase == "prime":
            out["count"] = dito_prime(y, lattice=tuple(ctx.lattice), seed=self.params["seed"])
        return out

    @classmethod
    def assign_phases(cls, column: list, complete: bool = False) -> list:
        """The dense step before a DiTo run becomes its `prime` step (or the run's first step, when no dense
        step precedes it); then `match` every `interval` steps from the first DiTo step and whenever k / params
        change, `reduce` between. complete: `column` is the whole run (num_steps known), so the reduce steps
        no later matching reads become `tail` steps (_tail_steps)."""
        out = list(column)
        prev_id, since = None, None
        for i, cfg in enumerate(column):
            if cfg is None or cfg.method != cls.name:
                prev_id, since = None, None
                continue
            if dict(cfg.params).get("phase", "auto") != "auto":
                raise ScheduleError("params.dito.phase is set from the run plan (schedules.plan); leave it out of the "
                                    "schedule (use `interval`)")
            interval = {**cls.defaults, **dict(cfg.params)}["interval"]
            if prev_id is None:  # a DiTo run starts
                if i > 0 and column[i - 1] is None:
                    out[i - 1] = _with_phase(cfg, "prime", dense=True)
                    since = i
                else:
                    out[i] = _with_phase(cfg, "prime", dense=True)
                    prev_id, since = _run_id(cfg), i + 1
                    continue
            elif _run_id(cfg) != prev_id:
                since = i
            prev_id = _run_id(cfg)
            out[i] = _with_phase(cfg, "match" if (i - since) % interval == 0 else "reduce")
        return _tail_steps(out) if complete else out


def _phase(cfg) -> str | None:
    return None if cfg is None or cfg.method != DiTo.name else dict(cfg.params).get("phase")


def _tail_steps(column: list) -> list:
    """State liveness over a whole run: a reduce step's y and counts are read only by a later `match` step of
    the same DiTo run (each step passes them on; a prime or dense step starts afresh). The reduce steps of a
    configuration whose y no later matching reads become `tail` steps, which neither refresh nor carry
    them; a configuration with any live reduce step keeps `reduce` for all its steps (one variant serves
    both, so liveness never adds a variant)."""
    live, read_later = [], False
    for cfg in reversed(column):
        live.append(read_later)
        phase = _phase(cfg)
        read_later = phase == "match" or (phase == "reduce" and read_later)
    live.reverse()
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(column):
        if _phase(cfg) == "reduce":
            groups.setdefault(_run_id(cfg), []).append(i)
    out = list(column)
    for steps in groups.values():
        if not any(live[i] for i in steps):
            for i in steps:
                out[i] = _with_phase(column[i], "tail")
    return out


def _with_phase(cfg, phase: str, dense: bool = False):
    params = tuple(sorted({**dict(cfg.params), "phase": phase}.items()))
    if dense:
        return dataclasses.replace(cfg, ratio=0.0, k=cfg.n, params=params)
    return dataclasses.replace(cfg, params=params)


def _run_id(cfg) -> tuple:
    return (cfg.k, cfg.scope, tuple((a, v) for a, v in cfg.params if a != "phase"))
