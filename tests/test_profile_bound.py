"""tools/profile_variant.py's FLOP-proportional bound: per-op records of a dense and a reduced call against a
hand-derived reference (which ops shrink by how much, which time is the region's)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SDPA = "aten::_scaled_dot_product_flash_attention_for_cpu"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("profile_variant", ROOT / "tools" / "profile_variant.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sdpa(lq, lk):
    return [[2, 4, lq, 32], [2, 4, lk, 32], [2, 4, lk, 32], [], [], [], []]


def _addmm(rows, k, n):
    return [[n], [rows, k], [k, n], [], []]


# (name, input shapes, calls per model call, self µs per model call): a small DiT's 8 blocks, dense
DENSE = [(SDPA, _sdpa(1024, 1024), 8, 8000.0),                  # self-attention
         (SDPA, _sdpa(1024, 4), 8, 800.0),                      # cross-attention to 4 text tokens
         ("aten::scaled_dot_product_attention", _sdpa(1024, 1024) + [[]], 8, 60.0),   # the dispatcher, no FLOPs
         ("aten::addmm", _addmm(2048, 128, 128), 48, 24000.0),  # q, k, v, out, cross q, cross out
         ("aten::addmm", _addmm(2048, 128, 512), 8, 20000.0),   # MLP
         ("aten::gelu", [[2, 1024, 512], []], 8, 24000.0)]
# attention+proj at k = 512: self-attention and 4 of the 6 projections on half the tokens; the region's merge
VARIANT = [(SDPA, _sdpa(512, 512), 8, 2700.0),
           (SDPA, _sdpa(1024, 4), 8, 800.0),
           ("aten::scaled_dot_product_attention", _sdpa(512, 512) + [[]], 8, 60.0),
           ("aten::addmm", _addmm(1024, 128, 128), 32, 9000.0),
           ("aten::addmm", _addmm(2048, 128, 128), 16, 8000.0),
           ("aten::addmm", _addmm(2048, 128, 512), 8, 20000.0),
           ("aten::gelu", [[2, 1024, 512], []], 8, 24000.0),
           ("aten::bmm", [[648, 9, 4], [648, 4, 128]], 8, 4300.0),
           ("aten::index_select", [[2, 1024, 128], [], [1296]], 8, 2200.0)]


def test_op_flops_groups_by_shape_bar_the_token_count(tool):
    self_dense, f_self = tool.op_flops(SDPA, _sdpa(1024, 1024))
    self_red, f_red = tool.op_flops(SDPA, _sdpa(512, 512))
    cross, _ = tool.op_flops(SDPA, _sdpa(1024, 4))
    assert self_dense == self_red != cross
    assert f_self == 2 * 2 * 4 * 1024 * 1024 * (32 + 32) and f_red == f_self / 4
    proj_a, fa = tool.op_flops("aten::addmm", _addmm(2048, 128, 128))
    proj_b, fb = tool.op_flops("aten::addmm", _addmm(1024, 128, 128))
    mlp, _ = tool.op_flops("aten::addmm", _addmm(2048, 128, 512))
    assert proj_a == proj_b != mlp and fa == 2 * 2048 * 128 * 128 == 2 * fb
    assert tool.op_flops("aten::gelu", [[2, 1024, 512], []]) is None
    assert tool.op_flops("aten::scaled_dot_product_attention", _sdpa(1024, 1024)) is None


def test_bound_shrinks_each_flop_group_by_its_flops_ratio_and_keeps_the_rest(tool):
    b = tool.flop_bound(DENSE, VARIANT)
    proj_ratio = (32 * 1024 + 16 * 2048) / (48 * 2048)       # 4 of 6 projections on half the rows
    assert b["bound_us"] == pytest.approx(8000 * 0.25 + 800 + 60 + 24000 * proj_ratio + 20000 + 24000)
    assert b["dense_us"] == pytest.approx(sum(r[3] for r in DENSE))
    assert b["variant_us"] == pytest.approx(sum(r[3] for r in VARIANT))
    assert b["dense_other_us"] == pytest.approx(60 + 24000)
    # ops or shapes only the variant runs: the merge's bmm and gather, the dispatcher at the reduced size
    assert b["region_us"] == pytest.approx(4300 + 2200 + 60)
    self_f, cross_f = 2 * 2 * 4 * 1024 * 1024 * 64, 2 * 2 * 4 * 1024 * 4 * 64
    proj_f, mlp_f = 2 * 2048 * 128 * 128, 2 * 2048 * 128 * 512
    assert b["dense_flops"] == pytest.approx(8 * (self_f + cross_f) + 48 * proj_f + 8 * mlp_f)
    assert b["variant_flops"] == pytest.approx(8 * (self_f / 4 + cross_f) + (16 + 16) * proj_f + 8 * mlp_f)


def test_inductor_kernels_of_two_graphs_are_one_op(tool):
    dense = [("graph_4_cpp_fused_gelu_view_8", [], 8, 15000.0), (SDPA, _sdpa(1024, 1024), 8, 8000.0)]
    variant = [("graph_3_cpp_fused_gelu_view_8", [], 8, 15000.0), (SDPA, _sdpa(512, 512), 8, 2700.0),
               ("graph_3_cpp_fused_add_index_select_mul_3", [], 8, 700.0)]
    b = tool.flop_bound(dense, variant)
    assert b["bound_us"] == pytest.approx(15000 + 2000) and b["region_us"] == pytest.approx(700)


def test_format_bound_reports_the_ratios(tool):
    b = {"dense_us": 200.0, "variant_us": 125.0, "bound_us": 100.0, "dense_flops": 400.0, "variant_flops": 160.0,
         "dense_other_us": 50.0, "region_us": 10.0}
    text = tool.format_bound(b)
    assert "dense 0.2 ms, variant 0.1 ms: 1.60x" in text
    assert "FLOPs-ideal (the profiled ops' FLOPs) 2.50x; the FLOP-proportional bound 2.00x, 0.80 of the ideal" in text
    assert "measured: 0.64 of the ideal, 0.80 of the bound" in text
