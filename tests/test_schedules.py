import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ditreduce.passes.site import Layout, Segment, Site
from ditreduce.schedules import ScheduleError, json_schema, load_schedule, presets, validate
from ditreduce.schedules.lower import plan_key
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
    ({"scope": "blocks"}, "scope", "'attention', 'attention+proj' or 'block'"),
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
    k = plan_key(s, sites, step=5, num_steps=10)
    assert [c.ratio if c else None for c in k] == [0.75, 0.5, 0.25, None]
    k0 = plan_key(s, sites, step=0, num_steps=10)
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
    (cfg,) = plan_key(s, [_site(0)], 0, None)
    assert cfg.ratio == 0.5 and cfg.k == 8


def test_json_schema_exports():
    schema = json.loads(json_schema())
    assert schema["additionalProperties"] is False
    assert {"method", "ratio", "rules", "layout"} <= set(schema["properties"])


def test_preset_files_are_plain_yaml():
    from ditreduce.schedules.load import PRESET_DIR

    for p in PRESET_DIR.glob("*.yaml"):
        assert isinstance(yaml.safe_load(p.read_text()), dict)
