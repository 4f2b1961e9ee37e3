import json

from ditreduce.cli import main


def test_inspect_prints_sites_and_plan(capsys):
    assert main(["inspect", "zoo:pixart_example", "--schedule", "uniform-progressive", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks.0.attn1" in out and "4x6" in out
    # uniform-progressive on 10 steps of a 2-block model: step 0 dense; the "last two blocks: 0.25" rule
    # overrides the ramp for every block of this model
    assert "0 dense, 1-9 uniform:0.25" in out
    assert "cross-attention" in out and "variants: 2" in out


def test_presets_and_schema(capsys):
    assert main(["presets"]) == 0
    assert "uniform-50" in capsys.readouterr().out.split()
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("ditreduce schedule")
