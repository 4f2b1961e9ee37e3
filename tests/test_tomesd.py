"""`--methods tomesd`: the adapter against tomesd's merge applied by hand in a hand-written PixArt block, the
dense steps and the untouched module, the skip reasons, and tomesd in the bench's one interleaved loop."""
import sys

import pytest
import torch

import zoo
from ditreduce.bench.tomesd import TomesdModel, TomesdUnavailableError, check_applicable
from ditreduce.cli import main

GRID = (4, 6)  # h != w: a swapped grid would draw other destinations


def _reference_forward(block, grid, ratio, generator):
    """diffusers' BasicTransformerBlock.forward for PixArt (ada_norm_single), written out, with tomesd's
    bipartite_soft_matching_random2d from the block input around attn1 — where tomesd's block applies it."""
    h, w = grid

    def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                timestep=None, cross_attention_kwargs=None, class_labels=None, added_cond_kwargs=None):
        b, n = hidden_states.shape[:2]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            block.scale_shift_table[None] + timestep.reshape(b, 6, -1)).chunk(6, dim=1)
        merge, unmerge = pytest.importorskip("tomesd.merge").bipartite_soft_matching_random2d(
            hidden_states, w, h, 2, 2, int(n * ratio), no_rand=False, generator=generator())
        norm = block.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        x = gate_msa * unmerge(block.attn1(merge(norm))) + hidden_states
        x = block.attn2(x, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask) + x
        norm = block.norm2(x) * (1 + scale_mlp) + shift_mlp
        return gate_mlp * block.ff(norm) + x

    return forward


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_adapter_equals_tomesd_merge_applied_by_hand(ratio):
    pytest.importorskip("tomesd")
    model, kw = zoo.pixart(grid=GRID)
    kw = dict(kw, return_dict=False)
    with torch.no_grad():
        dense = model(**kw)[0]
        tm = TomesdModel(model, ratio, seed=3)
        out = tm(**kw)[0]
        assert torch.equal(tm(**kw)[0], out)  # re-seeded every call: reproducible whatever ran before
        gen = {}  # one generator per model call, seeded as the adapter seeds it, drawn block after block

        def generator():
            return gen.setdefault("g", torch.Generator().manual_seed(3))

        for block in model.transformer_blocks:
            block.forward = _reference_forward(block, GRID, ratio, generator)
        ref = model(**kw)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - dense).abs().max() > 1e-3  # it merged something


def test_dense_steps_and_the_module_outside_a_call_stay_dense():
    pytest.importorskip("tomesd")
    model, kw = zoo.pixart(grid=GRID)
    kw = dict(kw, return_dict=False)
    tm = TomesdModel(model, 0.5, dense_fraction=0.4)
    with torch.no_grad():
        dense = {t: model(**dict(kw, timestep=torch.full((2,), t)))[0] for t in (900.0, 700.0, 500.0)}
        with tm.generation(num_steps=5):
            outs = [tm(**dict(kw, timestep=torch.full((2,), t)))[0] for t in (900.0, 700.0, 500.0)]
        after = model(**dict(kw, timestep=torch.full((2,), 500.0)))[0]
    assert torch.equal(outs[0], dense[900.0]) and torch.equal(outs[1], dense[700.0])  # steps 0, 1 of 5: dense
    assert not torch.allclose(outs[2], dense[500.0])
    assert torch.equal(after, dense[500.0])  # hooks live only during a TomesdModel call


def test_skip_reasons(monkeypatch):
    pytest.importorskip("tomesd")
    model, _ = zoo.sd3(grid=(4, 4))
    with pytest.raises(TomesdUnavailableError, match="BasicTransformerBlock self-attention; SD3Transformer2DModel"):
        check_applicable(model)
    monkeypatch.setitem(sys.modules, "tomesd", None)  # import tomesd -> ImportError
    monkeypatch.setitem(sys.modules, "tomesd.patch", None)
    with pytest.raises(TomesdUnavailableError, match=r"tomesd is not installed.*ditreduce\[bench\]"):
        check_applicable(zoo.pixart()[0])


def _bench(tmp_path, *extra):
    args = ["bench", "--quick", "--threads", "1", "--scopes", "attention+proj", "--out", str(tmp_path), *extra]
    assert main(args) == 0
    from ditreduce.bench.results import BenchResults

    return BenchResults.load(tmp_path / "results.json")


def test_bench_times_and_scores_tomesd_with_the_others(tmp_path):
    pytest.importorskip("tomesd")
    res = _bench(tmp_path, "--methods", "tome,tomesd")
    tome, tomesd = res.rows
    assert tomesd.method == "tomesd" and tomesd.error is None and tomesd.scope == "attention+proj"
    assert tomesd.timing.dense_times == tome.timing.dense_times  # one interleaved loop
    assert tomesd.per_step_variant == [0, 1, 1, 1, 1]  # first 20 % of 5 steps dense
    assert 0 < tomesd.flops.attention_ratio < 1 and 0 < tomesd.quality.psnr_db.median < 100
    assert tomesd.quality.seeds == tome.quality.seeds


def test_bench_skips_tomesd_with_the_reason_when_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tomesd", None)
    monkeypatch.setitem(sys.modules, "tomesd.patch", None)
    res = _bench(tmp_path, "--methods", "uniform,tomesd", "--no-quality")
    uniform, tomesd = res.rows
    assert uniform.error is None and "tomesd is not installed" in tomesd.error
    assert "tomesd is not installed" in (tmp_path / "results.md").read_text()
