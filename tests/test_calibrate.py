"""`ditreduce calibrate`: allocation follows the measured redundancy and meets the FLOPs budget; the CLI
writes an ordinary schedule."""
import pytest
import torch

from ditreduce import load_schedule
from ditreduce.errors import ScheduleError
from ditreduce.calibration import Redundancy, allocate
from ditreduce.cli import main


def _removed(doc, blocks, num_steps):
    sched = load_schedule(doc)
    kept = 0.0
    for step in range(num_steps):
        for b in blocks:
            r = 0.0
            for rule in sched.rules:
                if rule.blocks is not None and b not in rule.blocks:
                    continue
                if rule.matches_step(step, num_steps):
                    r = 0.0 if rule.method == "none" else (rule.ratio if rule.ratio is not None else r)
            kept += (1 - r) ** 2
    return 1 - kept / (num_steps * len(blocks))


def test_allocation_prunes_redundant_blocks_more_and_meets_the_budget():
    steps = 10
    values = torch.tensor([[0.9] * steps, [0.5] * steps, [0.7] * steps])  # block 0 most coherent
    doc, info = allocate(Redundancy(["a", "b", "c"], [0, 1, 2], values), steps, budget=0.3, phases=2)
    assert abs(_removed(doc, [0, 1, 2], steps) - 0.3) < 0.03
    assert abs(info["self_attention_flops_removed"] - 0.3) < 0.03
    last = {r["blocks"][0]: r["ratio"] for r in doc["rules"] if "blocks" in r and r["steps"]["stop"] == steps}
    assert last[0] > last[2] > last[1]
    assert doc["rules"][0] == {"step_fraction": {"start": 0.0, "stop": 0.2}, "method": "none"}


def test_a_budget_beyond_reach_names_the_limit():
    with pytest.raises(ScheduleError, match=r"--budget 0.9: must be in \(0, 0.75\) .*lower --budget"):
        allocate(Redundancy(["a"], [0], torch.ones(1, 10)), 10, budget=0.9)


@pytest.mark.parametrize("method", ["coredit", "dito"])
def test_generations_shorter_than_the_plan_are_a_schedule_error_saying_both_counts(method, tmp_path, capsys):
    """zoo:pixart_generate_example's generate() runs 3 steps; a 5-step plan cannot be measured on it."""
    out = tmp_path / "s.yaml"
    assert main(["calibrate", "zoo:pixart_generate_example", "--method", method, "--steps", "5", "--budget", "0.2",
                 "--phases", "1", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ditreduce: error: ScheduleError: calibrate: the plan has 5 steps (--steps 5) but generate() ran 3 "
                   "of them (steps 3..4 never observed); pass --steps 3 (the steps your generations run) or make "
                   "generate(transformer) run 5 steps"]
    assert not out.exists()


def test_cli_writes_a_loadable_schedule(tmp_path):
    out = tmp_path / "s.yaml"
    assert main(["calibrate", "small-dit", "--method", "coredit", "--budget", "0.3", "--steps", "5",
                 "--samples", "1", "--phases", "2", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# written by:") and "coherence_per_block_phase" in text
    sched = load_schedule(str(out))
    assert sched.method == "coredit" and sched.num_steps == 5 and len(sched.rules) == 1 + 8 * 2
