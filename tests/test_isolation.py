"""Samples are isolated: in a batch of independent requests, changing or NaN-poisoning sample i never
changes sample j != i, for every method and the scopes attention / attention+proj, unless i and j are a CFG
pair (the same latent twice, as diffusers' CFG batches are). `cfg: shared` still shares within real pairs.
Generations are isolated too: threads interleaving their generations on one model each get their own."""
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zoo
from ditreduce import compile_with_reduction

METHODS = ["coredit", "dito", "tome", "todo", "random", "uniform"]
SCOPES = ["attention", "attention+proj"]
B = 4  # two possible CFG pairs: (0, 2) and (1, 3)
TIMES = (900.0, 700.0, 500.0)  # dito: prime, match, reduce
_CACHE: dict = {}


def _schedule(method, scope, cfg=None):
    s = {"method": method, "ratio": 0.5, "scope": scope}
    if cfg is not None:
        s["params"] = {method: {"cfg": cfg}}
    if method == "dito":
        s["num_steps"] = len(TIMES)
    return s


def _reduced(family, method, scope, cfg=None):
    key = (family, method, scope, cfg)
    if key not in _CACHE:
        model, kw = zoo.build(family, batch=B)
        _CACHE[key] = (compile_with_reduction(model, _schedule(method, scope, cfg)), dict(kw, return_dict=False))
    return _CACHE[key]


def _run(reduced, kw, method):
    """Every output of one call (dito: of a 3-step generation), [B, ...] each."""
    with torch.no_grad():
        if method != "dito":
            return [reduced(**kw)[0]]
        outs = []
        with reduced.generation(num_steps=len(TIMES)):
            for t in TIMES:
                outs.append(reduced(**dict(kw, timestep=torch.full((B,), t)))[0])
        return outs


def _batch(kw, cfg_pairs: bool):
    """kw with independent latents, or CFG-like (sample i + B/2 has sample i's latent, its own text)."""
    kw = dict(kw)
    if cfg_pairs:
        x = kw["hidden_states"]
        kw["hidden_states"] = torch.cat([x[:B // 2], x[:B // 2]])
    return kw


def _poison(kw, i, how, seed):
    kw = dict(kw)
    x = kw["hidden_states"].clone()
    g = torch.Generator().manual_seed(10_000 + seed)  # never the zoo's own input seeds
    if how == "nan":
        x[i].view(-1)[seed % x[i].numel()] = float("nan")
    elif how == "all_nan":
        x[i] = float("nan")
    elif how == "change":
        x[i] = torch.randn(x[i].shape, generator=g)
    kw["hidden_states"] = x
    if how == "text":
        e = kw["encoder_hidden_states"].clone()
        e[i] = torch.randn(e[i].shape, generator=g)
        kw["encoder_hidden_states"] = e
    return kw


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(i=st.integers(0, B - 1), how=st.sampled_from(["change", "nan", "all_nan", "text"]),
       cfg_batch=st.booleans(), seed=st.integers(0, 2**16))
def test_changing_one_sample_never_changes_another(method, scope, i, how, cfg_batch, seed):
    reduced, kw = _reduced("pixart", method, scope)
    base = _batch(kw, cfg_batch)
    before = _run(reduced, base, method)
    after = _run(reduced, _poison(base, i, how, seed), method)
    partner = (i + B // 2) % B if cfg_batch else None
    for step, (a, b) in enumerate(zip(before, after)):
        for j in range(B):
            if j in (i, partner):
                continue
            assert torch.isfinite(b[j]).all(), f"step {step}: NaN in sample {j} from sample {i}"
            torch.testing.assert_close(b[j], a[j], rtol=0, atol=1e-6,
                                       msg=f"step {step}: sample {j} changed when sample {i} did ({how})")


@pytest.mark.parametrize("method", ["coredit", "tome", "dito"])
def test_shared_selection_applies_only_to_real_cfg_pairs(method):
    shared, kw = _reduced("pixart", method, "attention")
    per_sample, _ = _reduced("pixart", method, "attention", cfg="per_sample")
    independent = _batch(kw, False)
    for a, b in zip(_run(shared, independent, method), _run(per_sample, independent, method)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)   # no pair: shared runs exactly per sample
    cfg = _batch(kw, True)
    diffs = [(a - b).abs().max().item() for a, b in zip(_run(shared, cfg, method), _run(per_sample, cfg, method))]
    if method != "dito":
        assert max(diffs) > 1e-4, diffs                     # real CFG pairs still share
        return
    for st_ in shared.state.values():                       # dito: a pair keeps one matching, others their own
        assert torch.equal(st_["merged"][0], st_["merged"][2]) and torch.equal(st_["merged"][1], st_["merged"][3])


@pytest.mark.parametrize("family", ["flux", "cogvideox", "wan"])
def test_rope_tables_follow_each_samples_own_selection(family):
    """attention+proj gathers RoPE rows at the kept tokens: each sample at its own, never at sample 0's."""
    model, kw = zoo.build(family, batch=3)
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, _schedule("coredit", "attention+proj"))
    with torch.no_grad():
        before = reduced(**kw)[0]
        after = reduced(**_poison(kw, 0, "change", 1))[0]
    assert not torch.equal(after[0], before[0])
    torch.testing.assert_close(after[1:], before[1:], rtol=0, atol=1e-6)


STEPPED = {"ratio": 0.5, "rules": [{"steps": {"start": 0, "stop": 2}, "method": "none"},
                                   {"steps": {"start": 4}, "ratio": 0.25}]}   # dense, dense, 0.5, 0.5, 0.25
FALLING = (999.0, 800.0, 600.0, 400.0, 200.0)


def test_threads_interleaving_their_generations_step_by_step_get_their_own_steps():
    """Three threads run one generation each on one model, staggered by a step and taking turns at a Barrier:
    in round r thread i makes its step r - i, so every call comes right after another thread's call at another
    step. Each thread counts its own steps: each gets the outputs of its generation run alone. (A step clock
    shared between the threads counts thread 0's third call as step 1, dense, where step 2 reduces.)"""
    model, kw = zoo.handdit(batch=1)
    latents = [kw["hidden_states"] * (1 + 0.1 * i) for i in range(3)]
    reduced = compile_with_reduction(model, STEPPED)

    def call(x, t):
        with torch.no_grad():
            return reduced(hidden_states=x, timestep=torch.full((1,), t))[0]

    ref = []
    for x in latents:                                  # one generation after another, in this thread
        with reduced.generation(num_steps=len(FALLING)):
            ref.append([call(x, t) for t in FALLING])
    n, steps = len(latents), len(FALLING)
    turns = threading.Barrier(n, timeout=120)
    got, errors = [[None] * steps for _ in range(n)], []

    def run(i):
        try:
            for r in range(steps + n - 1):
                for turn in range(n):
                    turns.wait()
                    if turn == i and 0 <= r - i < steps:
                        got[i][r - i] = call(latents[i], FALLING[r - i])
        except threading.BrokenBarrierError:
            pass                                       # another thread failed: its error is reported
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(e)
            turns.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(n):
        for s in range(steps):
            torch.testing.assert_close(got[i][s], ref[i][s], rtol=0, atol=0, msg=f"thread {i}, step {s}")
