"""DiTo: output-similarity matching with state carried across steps as graph inputs / outputs."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import zoo
from ditreduce import compile_with_reduction
from ditreduce.calibration.dito import calibrate_dito, choose_interval, pmr, pmr_curve
from ditreduce.methods.dito import StateError
from ditreduce.backends.base import variant_label
from ditreduce.schedules.plan import phase_keys
from ditreduce.methods.graph import image_tokens
from ditreduce.methods.tome import tome_select
from ditreduce.regions import attention_region, forced_regions
from ditreduce.schedules import load_schedule
from ditreduce.schedules.lower import RegionConfig

TIMES = [950, 800, 650, 500, 350, 200, 100, 50]


def _sched(ratio=0.5, dense=2, **params):
    params.setdefault("cfg", "per_sample")  # the references below are per sample; `shared` is tested on its own
    s = {"version": 1, "method": "dito", "ratio": ratio, "scope": "attention", "num_steps": len(TIMES),
         "params": {"dito": params},
         "rules": []}
    if dense:
        s["rules"].append({"steps": {"start": 0, "stop": dense}, "method": "none"})
    return s


def _out(o):
    return o[0] if isinstance(o, tuple) else o.sample


def _generate(reduced, kw, times=TIMES):
    outs = []
    with torch.no_grad(), reduced.generation(num_steps=len(times)):
        for t in times:
            outs.append(_out(reduced(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))))
    return outs


def _pixart(grid=(8, 8), batch=2):
    m, kw = zoo.build("pixart", grid=grid, batch=batch)
    return m, dict(kw, return_dict=False)


class SdpaAttention(zoo.HandAttention):
    """HandAttention on F.scaled_dot_product_attention, with a hook the reference takes over."""
    hook = None

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v) if self.hook is None else self.hook(self, q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def _sdpa_dit(grid=(8, 8)):
    m, kw = zoo.handdit(grid=grid)
    for blk in m.blocks:
        blk.attn.__class__ = SdpaAttention
    return m, kw


# --- phases ----------------------------------------------------------------------------------------
def test_phases_prime_match_reduce():
    cfg = RegionConfig("dito", 0.5, 32, 64, (("cfg", "per_sample"), ("interval", 3), ("lam", 0.1), ("phase", "auto"),
                                             ("seed", 0)))
    keys = [(None,), (None,)] + [(cfg,)] * 6
    phases = [None if k[0] is None else (dict(k[0].params)["phase"], k[0].k) for k in phase_keys(keys)]
    assert phases == [None, ("prime", 64), ("match", 32), ("reduce", 32), ("reduce", 32), ("match", 32),
                      ("reduce", 32), ("reduce", 32)]
    # the schedule gave no interval: DiTo's default (2)
    bare = RegionConfig("dito", 0.5, 32, 64, ())
    assert [dict(k[0].params)["phase"] for k in phase_keys([(bare,)] * 4)] == ["prime", "match", "reduce", "match"]
    # no dense step before: the first DiTo step itself is the (dense) prime step
    phases = [dict(k[0].params)["phase"] for k in phase_keys([(cfg,)] * 3)]
    assert phases == ["prime", "match", "reduce"]


def test_reduce_steps_no_later_matching_reads_become_tail_steps_without_adding_a_variant():
    cfg = RegionConfig("dito", 0.5, 32, 64, (("interval", 20), ("phase", "auto")))
    keys = [(None,), (None,)] + [(cfg,)] * 6
    phases = lambda ks: [None if k[0] is None else dict(k[0].params)["phase"] for k in ks]
    assert phases(phase_keys(keys, complete=True)) == [None, "prime", "match"] + ["tail"] * 5
    assert phases(phase_keys(keys)) == [None, "prime", "match"] + ["reduce"] * 5   # an open plan's prefix
    # interval 3: the reduce steps between matchings are read later, so their configuration keeps `reduce`
    # for every step, the last two included (one variant, not two)
    every3 = RegionConfig("dito", 0.5, 32, 64, (("interval", 3), ("phase", "auto")))
    assert phases(phase_keys([(every3,)] * 7, complete=True)) == ["prime", "match", "reduce", "reduce", "match",
                                                                   "reduce", "reduce"]
    # a ratio change re-matches from the y of the steps before it: those stay live, the last run's are tails
    half = RegionConfig("dito", 0.25, 48, 64, (("interval", 20), ("phase", "auto")))
    assert phases(phase_keys([(cfg,)] * 4 + [(half,)] * 3, complete=True)) == [
        "prime", "match", "reduce", "reduce", "match", "tail", "tail"]


def test_tail_steps_carry_no_y_and_give_the_outputs_of_reduce_steps():
    """The same generation with the run known (tail steps: no refresh, state without y / count) and as an open
    plan (num_steps unknown: reduce steps) gives equal outputs; the tail variant has no dito_refresh node."""
    m, kw = _pixart()
    sched = {"version": 1, "method": "dito", "ratio": 0.5, "scope": "attention+proj",
             "params": {"dito": {"interval": 100, "cfg": "per_sample"}}}
    known = compile_with_reduction(m, sched)
    ref = _generate(known, kw)
    plan = known.plan(known.last_capture, len(TIMES))
    labels = [variant_label(plan.keys[i]) for i in plan.per_step]
    assert all(" tail " in lab for lab in labels[2:]), labels
    assert all("y" not in st and "count" not in st and "kept" in st for st in known.state.values())
    tail = known.variant(known.last_capture, plan.keys[plan.per_step[-1]])
    assert not [n for n in tail.graph.nodes if getattr(n.target, "__name__", "") == "dito_refresh"]
    open_plan = compile_with_reduction(m, sched)
    with torch.no_grad():
        got = [_out(open_plan(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))) for t in TIMES]
    assert open_plan.num_steps() is None
    assert all("y" in st for st in open_plan.state.values())  # reduce steps: y carried
    for i, (a, b) in enumerate(zip(got, ref)):
        assert torch.equal(a, b), f"step {i}"


# --- state reset, determinism ------------------------------------------------------------------------
def test_two_generations_back_to_back_are_identical():
    m, kw = _pixart()
    reduced = compile_with_reduction(m, _sched(interval=2))
    a = _generate(reduced, kw)
    assert reduced.state  # the last step left state behind ...
    b = _generate(reduced, kw)  # ... which the next generation must not read
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    fresh = _generate(compile_with_reduction(m, _sched(interval=2)), kw)
    assert all(torch.equal(x, y) for x, y in zip(a, fresh))
    dense = _generate(compile_with_reduction(m, {"method": "none", "ratio": 0.5} | {"method": "uniform", "ratio": 0.0}), kw)
    assert not torch.allclose(a[-1], dense[-1], atol=1e-4)  # ratio 0.5 really reduced


def test_missing_state_and_batch_change_are_named_errors():
    m, kw = _pixart()
    reduced = compile_with_reduction(m, _sched(interval=2))
    with torch.no_grad(), reduced.generation(num_steps=len(TIMES)):
        for t in TIMES[:4]:
            reduced(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))
        reduced.state.clear()
        with pytest.raises(StateError, match="no earlier step"):
            reduced(**dict(kw, timestep=torch.full_like(kw["timestep"], TIMES[4])))
    m2, kw2 = _pixart(batch=3)
    with torch.no_grad(), reduced.generation(num_steps=len(TIMES)):
        for t in TIMES[:3]:
            reduced(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))
        with pytest.raises(StateError, match="batch size"):
            reduced(**dict(kw2, timestep=torch.full((3,), TIMES[3])))
    # a new generation at the new batch size: a new capture, fresh state
    out3 = _generate(reduced, dict(kw2, timestep=torch.full((3,), 0)))
    assert out3[-1].shape[0] == 3 and torch.isfinite(out3[-1]).all()
    # set_step (benchmarks): a stateful variant without prior state runs on zero state
    reduced.set_step(4, len(TIMES))
    with torch.no_grad():
        out = _out(reduced(**kw))
    reduced.set_step(None)
    assert torch.isfinite(out).all()


# --- interval 1, lam 0 == ToMe matched on the previous step's outputs ---------------------------------
class PrevOutputToMe:
    """The plain reference: each attention keeps each token's last computed output; from `start` on,
    ToMe's selection on it decides the merge of this step (dense before)."""

    def __init__(self, k, grid, start):
        self.k, self.grid, self.start, self.prev, self.step = k, grid, start, {}, 0

    def __call__(self, mod, q, k, v):
        n = q.shape[-2]
        if self.step < self.start:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            sel = tome_select(self.prev[id(mod)], self.grid, self.k, seed=0)
            y = attention_region(q, k, v, None, *sel)
            kept = torch.zeros(y.shape[0], n, dtype=torch.bool).scatter(1, sel.kept.expand(y.shape[0], -1), True)
            y_tok = torch.where(kept[..., None], image_tokens(y, -2, 0, n), self.prev[id(mod)])
            self.prev[id(mod)] = y_tok
            return y
        self.prev[id(mod)] = image_tokens(y, -2, 0, n)
        return y


def test_interval_one_lam_zero_equals_reference():
    m, kw = _sdpa_dit()
    reduced = compile_with_reduction(m, _sched(interval=1, lam=0.0))
    got = _generate(reduced, kw)
    k = reduced.last_key[0].k
    assert k < 64
    ref_hook = PrevOutputToMe(k, (8, 8), start=2)
    SdpaAttention.hook = ref_hook
    try:
        ref = []
        with torch.no_grad():
            for i, t in enumerate(TIMES):
                ref_hook.step = i
                ref.append(m(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))[0])
    finally:
        SdpaAttention.hook = None
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {i}")


# --- penalty ----------------------------------------------------------------------------------------
def test_penalty_lowers_max_selection_count():
    m, kw = _pixart()
    maxima = {}
    for lam in (0.0, 1.0):
        reduced = compile_with_reduction(m, _sched(ratio=0.3, interval=1, lam=lam))
        _generate(reduced, kw)
        maxima[lam] = max(float(s["count"].max()) for s in reduced.state.values())
    assert maxima[1.0] < maxima[0.0], maxima


# --- ratio 0 ----------------------------------------------------------------------------------------
@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(family=st.sampled_from(["pixart", "handdit", "flux"]), h=st.integers(2, 6), w=st.integers(2, 6),
       batch=st.integers(1, 2), interval=st.integers(1, 3), scope=st.sampled_from(["attention", "attention+proj", "block"]))
@example(family="pixart", h=4, w=3, batch=2, interval=100, scope="attention+proj")   # match, then tail steps
def test_ratio_zero_is_equivalence(family, h, w, batch, interval, scope):
    """Forced regions: the prime, match, reduce and tail steps at k = N run merge_selection on their (empty)
    matchings and the full gather / sdpa / reconstruct path."""
    model, kw = zoo.build(family, grid=(h, w), batch=batch)
    if family != "handdit":
        kw = dict(kw, return_dict=False)
    times = TIMES[:4]
    with forced_regions():
        reduced = compile_with_reduction(model, _sched(ratio=0.0, dense=0, interval=interval) | {"scope": scope})
        got = _generate(reduced, kw, times)
    with torch.no_grad():
        ref = [_out(model(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))) for t in times]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- CFG --------------------------------------------------------------------------------------------
def _cfg_batch(kw):
    out = dict(kw)
    out["hidden_states"] = torch.cat([kw["hidden_states"]] * 2)
    out["encoder_hidden_states"] = torch.cat([kw["encoder_hidden_states"], torch.zeros_like(kw["encoder_hidden_states"])])
    out["timestep"] = torch.cat([kw["timestep"]] * 2)
    return out


def test_cfg_shared_halves_select_alike_and_two_pass_matches_batched():
    m, kw = _pixart(batch=1)
    cfg_kw = _cfg_batch(kw)
    shared = compile_with_reduction(m, _sched(interval=2, cfg="shared"))
    _generate(shared, cfg_kw)
    for st_ in shared.state.values():
        assert torch.equal(st_["merged"][0], st_["merged"][1]) and torch.equal(st_["arg"][0], st_["arg"][1])
    # per-sample: one batched CFG call per step == two calls per step (uncond, cond), each with its own state
    batched = _generate(compile_with_reduction(m, _sched(interval=2)), cfg_kw)
    two = compile_with_reduction(m, _sched(interval=2))
    halves = [{k: (v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in cfg_kw.items()}
              for i in (0, 1)]
    with torch.no_grad(), two.generation(num_steps=len(TIMES)):
        for i, t in enumerate(TIMES):
            outs = [_out(two(**dict(h, timestep=torch.full((1,), t)))) for h in halves]
            torch.testing.assert_close(torch.cat(outs), batched[i], rtol=1e-5, atol=1e-5)
    assert {slot for slot, _ in two.state} == {0, 1}


# --- export -----------------------------------------------------------------------------------------
BANNED = ("scatter_reduce", "scatter_add", "index_put", "nonzero")


def test_export_has_state_inputs_outputs_and_no_banned_ops():
    m, kw = _pixart()
    reduced = compile_with_reduction(m, _sched(interval=2))
    progs = reduced.export_programs(num_steps=len(TIMES), **kw)
    phases = {}
    for name, ep in progs.items():
        ins = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert not [o for o in ops if any(b in o for b in BANNED)], name
        for n in ep.graph.nodes:
            if n.op == "call_function" and "topk" in str(n.target):
                assert n.args[1] <= 3840
        state_in = [i for i in ins if i.startswith("state_")]
        n_out = len(ep.call_spec.out_spec.children()[1].children()[0].children()) if ep.call_spec.out_spec.num_children == 2 \
            else 0
        phases[name] = (len(state_in), n_out)
    # dense, prime (no state in, state out), match (y + count in), reduce (y + count + pairs + the matching's
    # Selection in: kept, src, mw, wmix, sizes)
    assert sorted(phases.values()) == sorted([(0, 0), (0, 2), (2 * 2, 2), (10 * 2, 2)])


@pytest.mark.slow  # ONNX export of 4 variants + ORT sessions: ~30 s on the shared 2-core machine
def test_onnx_export_names_state_and_runs_in_ort():
    pytest.importorskip("onnxruntime")
    import tempfile

    from ditreduce.backends.onnxruntime import load_onnx

    m, kw = _pixart()
    reduced = compile_with_reduction(m, _sched(interval=2))
    ref = _generate(reduced, kw)
    with tempfile.TemporaryDirectory() as d:
        man = reduced.export(d, num_steps=len(TIMES), **kw)
        match = [v for v in man.variants if any(i.name.endswith(".y") for i in v.state_inputs)]
        assert match and all(o.name.startswith("state_out.") for o in match[0].state_outputs)
        ort = load_onnx(f"{d}/manifest.json")
        with ort.generation(num_steps=len(TIMES)):
            # up to the first reduction step after the first matching (later matchings may break exact
            # similarity ties of copied outputs differently in ONNX Runtime)
            for i, t in enumerate(TIMES[:4]):
                out = ort(**dict(kw, timestep=torch.full_like(kw["timestep"], t)))[0]
                torch.testing.assert_close(out, ref[i], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # ONNX export of 4 variants + ORT sessions
def test_onnx_tail_variant_carries_only_the_matching_and_runs_a_whole_generation_in_ort(tmp_path):
    """One matching per run: the exported tail variant's state I/O is the pairs and the Selection (no y, no
    count), and the ONNX Runtime manifest runner gives eager's outputs at every step of the generation."""
    pytest.importorskip("onnxruntime")
    from ditreduce.backends.onnxruntime import load_onnx

    m, kw = _pixart()
    reduced = compile_with_reduction(m, _sched(interval=100))
    ref = _generate(reduced, kw)
    man = reduced.export(tmp_path, num_steps=len(TIMES), **kw)
    tail = man.variants[man.steps[-1]]
    names = {i.name.rsplit(".", 1)[1] for i in tail.state_inputs}
    assert names == {"merged", "unmerged", "arg", "kept", "src", "mw", "wmix", "sizes"}, names
    assert {o.name.rsplit(".", 1)[1] for o in tail.state_outputs} == names
    ort = load_onnx(tmp_path / "manifest.json")
    got = _generate(ort, kw)
    for i, (a, b) in enumerate(zip(got, ref)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"step {i}")


# --- PMR and calibration ----------------------------------------------------------------------------
def test_pmr_on_synthetic_pair_sets():
    a = torch.tensor([[1, 0], [3, 2], [5, 4], [7, 6]])
    assert pmr(a, a) == 1.0
    assert pmr(a, a.flip(0)) == 1.0  # a set, order-free
    assert pmr(a, a + 100) == 0.0
    half = torch.cat([a[:2], a[2:] + 100])
    assert pmr(a, half) == 0.5
    assert pmr(torch.stack([a, a]), torch.stack([a, half])) == 0.75
    gens = [{(0, "s"): {0: a, 1: a, 2: half, 3: a + 100}}]
    curve = pmr_curve(gens, 3)
    assert curve == {1: (1 + 0.5 + 0.5) / 3, 2: (0.5 + 0) / 2, 3: 0.0}
    assert choose_interval({1: 0.9, 2: 0.8, 3: 0.4, 4: 0.85}, 0.7) == 2
    assert choose_interval({1: 0.3, 2: 0.2}, 0.7) == 1


def test_calibrate_dito_writes_a_loadable_schedule():
    m, kw = _pixart()
    lines = []
    sched = calibrate_dito(m, lambda tr: _generate(tr, kw), len(TIMES), ratio=0.5, threshold=0.0, max_interval=3,
                           dense_fraction=0.25, log=lines.append)
    assert sched["params"]["dito"]["interval"] == 3  # threshold 0: every measured Δ qualifies
    assert len(lines) == 3 and load_schedule(sched).method == "dito"
    strict = calibrate_dito(m, lambda tr: _generate(tr, kw), len(TIMES), ratio=0.5, threshold=1.01,
                            max_interval=3, dense_fraction=0.25)
    assert strict["params"]["dito"]["interval"] == 1
