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


# --- refused requests: one line, exit 2, no traceback (issue 17) ---------------------------------------
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.mark.parametrize("argv, allowed", [
    (["inspect", "--steps", "0"], "argument --steps: an integer >= 1 expected, got 0"),
    (["export", "small-dit", "uniform-50", "out", "--steps", "-3"], "argument --steps: an integer >= 1 expected"),
    (["bench", "--ratios", ""], "argument --ratios: comma-separated numbers in [0, 0.95] expected, got ''"),
    (["bench", "--ratios", "0.3,,0.5"], "argument --ratios: comma-separated numbers"),
    (["bench", "--ratios", "0.3,nan"], "argument --ratios: a number in [0, 0.95] expected, got 'nan'"),
    (["bench", "--backends", "bogus"], "argument --backends: invalid choice 'bogus'; allowed (comma-separated): "
                                       "eager, inductor, onnxruntime, tensorrt"),
    (["bench", "--scopes", "blocks"], "allowed (comma-separated): attention, attention+proj, block"),
    (["bench", "--dense-fraction", "1.5"], "argument --dense-fraction: a number in [0, 1) expected"),
    (["calibrate", "--samples", "0"], "argument --samples: an integer >= 1 expected"),
    (["calibrate", "--budget", "inf"], "argument --budget: a number in [0, 0.95] expected"),
    (["demo", "--res", "abc"], "argument --res: an integer >= 1 expected, got 'abc'"),
])
def test_bad_arguments_are_argparse_errors_naming_the_allowed_values(argv, allowed, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert allowed in err, err


@pytest.mark.parametrize("argv, message", [
    (["inspect", "zoo:pixart_example", "--schedule", "nosuch-preset"], "ScheduleError: no schedule file 'nosuch-preset' and no preset"),
    (["inspect", "nosuchmodule:make"], "BenchModelError: model 'nosuchmodule:make': cannot load it"),
    (["inspect", "notaspec"], "BenchModelError: model must be 'small-dit' or 'package.module:function'"),
    (["check-tensorrt", "/nonexistent/manifest.json"], "BackendError: no manifest at /nonexistent/manifest.json"),
])
def test_ditreduce_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ditreduce: error: ") and message in lines[0], cap.err
    assert "Traceback" not in cap.err


def test_schedule_error_in_a_subprocess_is_one_line_and_traceback_on_request(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratio: 0.5\nratio: 0.6\n")
    cmd = [sys.executable, "-m", "ditreduce.cli", "inspect", "zoo:pixart_example", "--schedule", str(bad)]
    env = {k: v for k, v in os.environ.items() if k != "DITREDUCE_TRACEBACK"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), os.getcwd()])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "duplicate key 'ratio'" in r.stderr, r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, DITREDUCE_TRACEBACK="1"), timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "ScheduleError" in r.stderr
