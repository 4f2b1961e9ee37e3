import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ditreduce.passes.site import Layout, Segment, Site
from ditreduce.schedules import ScheduleError, json_schema, load_schedule, presets, validate
from ditreduce.schedules.lower import step_key
from ditreduce.schedules.plan import plan_run


@pytest.mark.parametrize("name", presets())
def test_every_preset_loads(name):
    s = load_schedule(name)
    assert s.version == 1


def test_smallest_schedule_yaml(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("method: uniform\nratio: 0.5\n")
    s = load_schedule(p)
    assert (s.method, s.ratio, s.kinds) == ("uniform", 0.5, ["self", "joint"])
    assert load_schedule({"method": "uniform", "ratio": 0.5}) == s
    assert load_schedule(s) is s


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ScheduleError, match="not valid YAML"):
        load_schedule(p)


@pytest.mark.parametrize("doc, field, allowed", [
    ({"ratio": 1.5}, "ratio", "less than or equal to 0.95"),
    ({"metod": "uniform"}, "metod", "allowed keys here: version, method, ratio"),
    ({"method": "tome2"}, "method", "allowed: coredit, dito, random, todo, tome, uniform, none"),
    ({"rules": [{"bloks": 1, "ratio": 0.1}]}, "rules[0].bloks", "allowed keys here: blocks, modules"),
    ({"rules": [{"blocks": "a:b", "ratio": 0.1}]}, "rules[0].blocks", "integers"),
    ({"rules": [{"kinds": ["selff"], "ratio": 0.1}]}, "rules[0].kinds[0]", "'self', 'cross' or 'joint'"),
    ({"rules": [{"modules": "*"}]}, "rules[0]", "at least one of: ratio, method, scope, params"),
    ({"rules": [{"ratio": 0.1, "method": "nope"}]}, "rules[0].method", "allowed: coredit, dito, random, todo, tome"),
    ({"version": 2}, "version", "1"),
    ({"layout": {"grid": [4]}}, "layout.grid", "at least 2"),
    ({"scope": "blocks"}, "scope", "'attention', 'attention+proj', 'attention+cross' or 'block'"),
    ({"params": {"coredit": {"slots": 9}}}, "params", "not one of"),
])
def test_invalid_documents_name_the_field(doc, field, allowed):
    with pytest.raises(ScheduleError) as e:
        validate(doc)
    msg = str(e.value)
    assert f"  {field}:" in msg and allowed in msg, msg


_keys = st.sampled_from(["version", "method", "ratio", "scope", "kinds", "ratio_step", "num_steps", "rules",
                         "layout", "params", "bogus", "ratioo"])
_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.just(float("nan"))
                       | st.text(max_size=5), lambda c: st.lists(c, max_size=3)
                       | st.dictionaries(st.sampled_from(["blocks", "steps", "ratio", "method", "start", "stop",
                                                          "grid", "kinds", "x"]), c, max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5) | _values)
def test_generated_documents_raise_only_schedule_error(doc):
    try:
        s = validate(doc)
    except ScheduleError as e:
        assert "invalid schedule" in str(e) or "reduces" in str(e)
        return
    assert s.version == 1


def _site(block, module="blocks.{}.attn1", kind="self", n=16):
    from unittest.mock import MagicMock

    s = Site(node=MagicMock(), module=module.format(block), block=block, block_group="blocks", q_len=n, kv_len=n,
             batch=1, heads=1, head_dim=8, v_dim=8, kind=kind)
    s.layout = Layout((Segment("image", n, (4, n // 4)),))
    return s


def test_rule_precedence_later_rule_wins_field_by_field():
    s = load_schedule({"ratio": 0.5, "rules": [
        {"blocks": {"start": -2}, "ratio": 0.25},
        {"blocks": [3], "method": "none"},
        {"modules": "blocks.0.*", "ratio": 0.75},
        {"steps": "0:2", "ratio": 0.1},
    ]})
    sites = [_site(b) for b in range(4)]
    k = step_key(s, sites, step=5, num_steps=10)
    assert [c.ratio if c else None for c in k] == [0.75, 0.5, 0.25, None]
    k0 = step_key(s, sites, step=0, num_steps=10)
    assert [c.ratio if c else None for c in k0] == [0.1, 0.1, 0.1, None]
    assert k0[0].k == 16 - round(0.1 * 16)


def test_step_fraction_and_variants():
    s = load_schedule("uniform-progressive")
    sites = [_site(b) for b in range(4)]
    plan = plan_run(s, sites, 20)
    keys, per_step = plan.keys, plan.per_step
    assert per_step[:2] == [per_step[0]] * 2 and keys[per_step[0]] == (None,) * 4  # dense first 10 %
    assert keys[per_step[3]][0].ratio == 0.3 and keys[per_step[10]][0].ratio == 0.5
    assert keys[per_step[10]][3].ratio == 0.25  # last two blocks reduced less
    assert len(keys) == 3


def test_ratio_quantisation_limits_variants():
    s = load_schedule({"ratio": 0.52, "ratio_step": 0.1})
    (cfg,) = step_key(s, [_site(0)], 0, None)
    assert cfg.ratio == 0.5 and cfg.k == 8


def test_json_schema_exports():
    schema = json.loads(json_schema())
    assert schema["additionalProperties"] is False
    assert {"method", "ratio", "rules", "layout"} <= set(schema["properties"])


def test_preset_files_are_plain_yaml():
    from ditreduce.schedules.load import PRESET_DIR

    for p in PRESET_DIR.glob("*.yaml"):
        assert isinstance(yaml.safe_load(p.read_text()), dict)


def test_the_schedules_the_docs_ship_load_as_written():
    """docs/*.yaml (tuned and example schedules the README and docs point to) are valid schedules."""
    from pathlib import Path

    from ditreduce.methods import METHODS

    shipped = sorted((Path(__file__).parent.parent / "docs").glob("*.yaml"))
    assert len(shipped) >= 4
    for p in shipped:
        s = load_schedule(str(p))
        assert s.method in METHODS and max([s.ratio] + [r.ratio or 0 for r in s.rules]) > 0, p.name


# --- the validator refuses what would crash or give NaN (issue 17) -------------------------------------
@pytest.mark.parametrize("doc, field, allowed", [
    ({"params": {"coredit": {"tau": 0}}}, "params", "coredit.tau: 0.0 must be in [0.01, 100.0]"),
    ({"params": {"coredit": {"tau": float("nan")}}}, "params", "coredit.tau: nan must be a finite number"),
    ({"params": {"coredit": {"tau": float("inf")}}}, "params", "must be a finite number"),
    ({"params": {"tome": {"seed": 2**70}}}, "params", "tome.seed: 1180591620717411303424 must be in"),
    ({"params": {"random": {"seed": -2**64}}}, "params", "random.seed"),
    ({"params": {"dito": {"lam": float("nan")}}}, "params", "dito.lam: nan must be a finite number"),
    ({"params": {"dito": {"interval": 0}}}, "params", "dito.interval: 0 must be in [1, 10000]"),
    ({"ratio_step": 5e-324}, "ratio_step", "greater than or equal to 0.001"),
    ({"ratio_step": float("nan")}, "ratio_step", "finite number"),
    ({"ratio": float("nan")}, "ratio", "finite number"),
    ({"num_steps": 2**70}, "num_steps", "less than or equal to 100000"),
    ({"method": "coredit", "rules": [{"blocks": [0], "params": {"tau": 0.0}}]}, "<document>", "rules[0].params: params.coredit.tau"),
])
def test_values_that_crash_or_give_nan_are_refused(doc, field, allowed):
    with pytest.raises(ScheduleError) as e:
        validate(doc)
    msg = str(e.value)
    assert f"  {field}:" in msg and allowed in msg, msg


_PARAM_VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**80, 2**80),
                          st.sampled_from([0, 0.0, 1e-300, 5e-324, -1.0, 1e300, 2**63, 2**63 - 1]))


@settings(max_examples=120, deadline=None)
@given(method=st.sampled_from(["coredit", "tome", "random", "dito"]), value=_PARAM_VALUES,
       key=st.sampled_from(["tau", "seed", "lam", "interval"]))
def test_accepted_numeric_params_give_finite_selections(method, key, value):
    import torch

    from ditreduce.methods import METHODS
    from ditreduce.methods.dito import dito_match, dito_selection, num_sources

    if key not in METHODS[method].defaults:
        return
    try:
        validate({"method": method, "params": {method: {key: value}}})
    except ScheduleError:
        return
    m = METHODS[method](**{key: value})
    x = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(0))
    if method == "dito":
        p = m.params
        count = torch.zeros(2, num_sources((4, 4), p["seed"]))
        merged, unmerged, arg, _ = dito_match(x, count, lattice=(4, 4), k=8, seed=p["seed"], cfg=p["cfg"], lam=p["lam"])
        sel = dito_selection(merged, unmerged, arg, n=16, lattice=(4, 4), k=8, seed=p["seed"])
    else:
        sel = m.select(x, (4, 4), 8)
    for t in sel:
        assert t is None or torch.isfinite(t.float()).all()


def _write(tmp_path, data, name="s.yaml"):
    p = tmp_path / name
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return p


@pytest.mark.parametrize("make, match", [
    (lambda d: _write(d, b"\xff\xfe\x00ratio: \x89PNG\x00\x01"), "not UTF-8 text"),
    (lambda d: d, "is a directory"),
    (lambda d: _write(d, "rules: " + "[" * 5000 + "]" * 5000 + "\n"), "nested deeper than 32"),
    (lambda d: _write(d, "ratio: 0.3\nmethod: tome\nratio: 0.9\n"), "duplicate key 'ratio'"),
    (lambda d: _write(d, "rules:\n  - blocks: [0]\n    ratio: 0.1\n    ratio: 0.2\n"), "duplicate key 'ratio'"),
])
def test_files_that_are_not_schedules_are_schedule_errors(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(ScheduleError, match=match) as e:
        load_schedule(path)
    assert str(path) in str(e.value)


def test_unused_selectors_are_reported_on_captured_sites():
    import zoo
    from ditreduce import compile_with_reduction
    from ditreduce.schedules.check import unused_selectors

    model, kw = zoo.build("pixart")
    sched = load_schedule({"ratio": 0.5, "rules": [{"modules": "transformer_blocks.*.attn1", "ratio": 0.3},
                                                   {"modules": "transformer_block.*.attn1", "ratio": 0.1}],
                           "layout": {"grid": [4, 4], "modules": "blocks.*"}})
    cap = compile_with_reduction(model, sched).capture(**kw)
    notes = unused_selectors(sched, cap.sites)
    assert len(notes) == 2, notes
    assert notes[0].startswith("rules[1].modules 'transformer_block.*.attn1' matches no attention site")
    assert "transformer_blocks.0.attn1" in notes[0]
    assert notes[1].startswith("layout override with modules 'blocks.*'") and "matches no site" in notes[1]
    used = load_schedule({"ratio": 0.5, "rules": [{"modules": "transformer_blocks.1.*", "ratio": 0.3}]})
    assert unused_selectors(used, cap.sites) == []


def test_dense_prefix_is_the_rule_that_keeps_the_first_steps_dense():
    from ditreduce.schedules import dense_prefix

    sched = load_schedule({"method": "uniform", "ratio": 0.5, "rules": [dense_prefix(0.25)]})
    (rule,) = sched.rules
    assert rule.method == "none" and [rule.matches_step(i, 8) for i in range(8)] == [True] * 2 + [False] * 6
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="dense_prefix"):
            dense_prefix(bad)
