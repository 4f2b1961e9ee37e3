"""The bench's headline: per method, the fastest configuration at a median PSNR target."""
from ditreduce.bench.results import (BenchResults, FlopsRecord, QualityRecord, Row, Stat, TimingRecord,
                                    equal_quality_markdown, fastest_at_quality)


def _stat(v):
    return Stat(median=v, min=v, max=v, n=1)


def _row(method, scope, ratio, speed, psnr):
    flops = FlopsRecord(whole_dense=1, whole_reduced=1, attention_dense=1, attention_reduced=1, run_whole_dense=1,
                        run_whole_reduced=1, run_attention_dense=1, run_attention_reduced=1, whole_ratio=1.0,
                        attention_ratio=1.0, ideal_speedup=1.0)
    timing = TimingRecord(dense_baseline="eager module", dense_s=_stat(1.0), reduced_s=_stat(1 / speed),
                          call_speedup=_stat(speed), run_speedup=_stat(speed), achieved_over_ideal=1.0, repeats=1,
                          dense_times=[1.0], variant_times=[[1 / speed]], busiest_variant=0)
    quality = QualityRecord(psnr_db=_stat(psnr), ssim=_stat(0.9), seeds=[0], steps=20, res=64, guidance=3.0,
                            sample_s_dense=1.0, sample_s_reduced=1.0)
    return Row(model="m", image_tokens=16, blocks=2, method=method, scope=scope, backend="eager", nominal_ratio=ratio,
               ratio=ratio, schedule={}, steps=20, flops=flops, timing=timing, quality=quality)


ROWS = [_row("a", "attention", 0.3, 1.1, 31.0), _row("a", "block", 0.5, 1.9, 20.0), _row("a", "attention+proj", 0.5, 1.4, 27.5),
        _row("b", "attention", 0.3, 1.3, 26.0), _row("b", "block", 0.5, 2.0, 12.0)]


def test_fastest_configuration_per_method_at_each_target():
    picks = {(t, m): (r.scope, r.ratio) if r else None for t, m, r in fastest_at_quality(ROWS)}
    assert picks == {(30.0, "a"): ("attention", 0.3), (30.0, "b"): None,
                     (27.0, "a"): ("attention+proj", 0.5), (27.0, "b"): None,     # 1.9x block is below 27 dB
                     (24.0, "a"): ("attention+proj", 0.5), (24.0, "b"): ("attention", 0.3)}


def test_the_shipped_results_give_the_readme_headline():
    from pathlib import Path

    res = BenchResults.load(Path(__file__).parents[1] / "docs" / "bench-quality-small-dit.json")
    lines = equal_quality_markdown(res)
    assert "| 27 | dito | attention+proj | 0.5 | 1.42× [1.15–1.46]" in "\n".join(lines)
