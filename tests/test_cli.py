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
                                       "eager, inductor, aotinductor, onnxruntime, tensorrt"),
    (["bench", "--scopes", "blocks"], "allowed (comma-separated): attention, attention+cross, attention+proj, block"),
    (["bench", "--dense-fraction", "1.5"], "argument --dense-fraction: a number in [0, 1) expected"),
    (["calibrate", "--samples", "0"], "argument --samples: an integer >= 1 expected"),
    (["calibrate", "--budget", "inf"], "argument --budget: a number in [0, 0.95] expected"),
    (["demo", "--res", "abc"], "argument --res: an integer >= 1 expected, got 'abc'"),
    (["zoo", "--classes", "dit,nosuch"], "argument --classes: invalid choice 'nosuch'; allowed (comma-separated): "),
    (["build-engines", "m.json", "--batch", "4,2,1"], "argument --batch: MIN,OPT,MAX expected"),
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
    (["inspect", "notaspec"], "BenchModelError: model 'notaspec': not a model spec; accepted spellings: small-dit[:RES], "
                              "pixart-alpha:TOKENS:BLOCKS, DiffusersClass:{json config}, package.module:callable"),
    (["export", "notaspec", "uniform-50", "unused"], "BenchModelError: model 'notaspec': not a model spec"),
    (["calibrate", "nosuchmodule:make"], "BenchModelError: model 'nosuchmodule:make': cannot load it"),
    (["calibrate", "zoo:pixart_example"], "BenchModelError: model 'zoo:pixart_example' cannot generate: calibrate"),
    (["demo", "zoo:pixart_example"], "BenchModelError: demo samples images and compares them, so it needs small-dit"),
    (["inspect", "small-dit:abc"], "BenchModelError: model 'small-dit:abc': write small-dit or small-dit:RES"),
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


# --- one resolver for model specs: every command takes every spelling ---------------------------------
TINY_DIT = ('DiTTransformer2DModel:{"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, '
            '"out_channels": 8, "num_layers": 1, "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 1000, '
            '"norm_num_groups": 1}')


@pytest.mark.parametrize("spec, site", [(TINY_DIT, "transformer_blocks.0.attn1"),
                                        ("small-dit:32", "16x16"),
                                        ("zoo:pixart_generate_example", "4x6")])  # a 3-tuple callable
def test_inspect_takes_every_spelling(spec, site, capsys):
    assert main(["inspect", spec, "--schedule", "uniform-50"]) == 0
    assert site in capsys.readouterr().out


def test_export_takes_a_diffusers_class_spec(tmp_path, capsys):
    assert main(["export", TINY_DIT, "uniform-50", str(tmp_path / "out"), "--steps", "2"]) == 0
    assert (tmp_path / "out" / "manifest.json").exists()


def test_calibrate_takes_a_callable_with_generate(tmp_path):
    from ditreduce.schedules import load_schedule

    out = tmp_path / "s.yaml"
    assert main(["calibrate", "zoo:pixart_generate_example", "--steps", "3", "--budget", "0.2", "--phases", "1",
                 "--dense-fraction", "0.34", "-o", str(out)]) == 0
    sched = load_schedule(str(out))
    assert sched.method == "coredit" and sched.num_steps == 3
    assert sched.rules[0].method == "none" and sched.rules[0].step_fraction.stop > 0


def test_zoo_prints_the_rows_of_the_classes_asked_for(capsys):
    assert main(["zoo", "--classes", "dit,sana"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| model (zoo name) | sites (reduced / found)") and len(out) == 4
    assert out[2].startswith("| DiTTransformer2DModel (dit) | 2 / 2 | self | 4x4 | 0 | 0.0e+00 | 0.25× |")
    assert out[3].startswith("| SanaTransformer2DModel (sana) | – |") and "ScheduleError" in out[3]


def test_zoo_takes_model_specs_and_does_not_import_tests(capsys):
    import ast
    from pathlib import Path

    import ditreduce.zoo

    assert main(["zoo", "--models", TINY_DIT]) == 0  # --models alone: only its rows
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith("| DiTTransformer2DModel (DiTTransformer2DModel:{") and "| 1 / 1 |" in out[2]
    for path in Path(ditreduce.zoo.__file__).parent.glob("*.py"):  # installed with the package: no tests/ imports
        text = path.read_text()
        names = {a.name.split(".")[0] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(text))
                  if isinstance(n, ast.ImportFrom) and not n.level}
        assert not names & {"tests", "zoo", "zoo_more", "anydit", "conftest"} and "sys.path" not in text, path


# --- every failure of every subcommand: one line on stderr, exit 2 (issue 40) --------------------------
def _cli_failure(argv, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `ditreduce ARGV` in this process: an argparse error exits, the rest returns."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _results_json(path):
    from ditreduce.bench.results import BenchResults

    BenchResults(ditreduce_version="0", created_utc="2026-12-07T00:00:00", command=["ditreduce", "bench"], machine={},
                 settings={}, equal_flops=False, matched=[], models=[], rows=[], process_peak_rss_bytes=0).save(path)
    return str(path)


FAILURES = [   # (case, argv in a folder d holding a text file d/file, what the line says: a regex)
    ("no command", lambda d: [],
     r"ditreduce: error: the following arguments are required: cmd \(see `ditreduce --help`\)"),
    ("unknown option", lambda d: ["inspect", "--bogus"], "ditreduce: error: unrecognized arguments: --bogus"),
    ("inspect: a folder as schedule", lambda d: ["inspect", "zoo:pixart_example", "--schedule", str(d)],
     "ScheduleError: invalid schedule"),
    ("bench: --out is a file", lambda d: ["bench", "--out", str(d / "file")],
     "ditreduce bench: error: argument --out: '.*' is a file; give a folder"),
    ("bench-docs: not a results.json", lambda d: ["bench-docs", str(d / "file"), str(d / "out.md")],
     "BenchError: results '"),
    ("bench-docs: a path it may not write", lambda d: ["bench-docs", _results_json(d / "r.json"), "/sys/ditreduce.md"],
     "PermissionError|no permission to write"),
    ("calibrate: -o in a missing folder", lambda d: ["calibrate", "-o", str(d / "no" / "s.yaml")],
     "ditreduce calibrate: error: argument -o/--out: cannot write '.*': there is no folder"),
    ("calibrate: the model file is missing", lambda d: ["calibrate", "small-dit", "-o", str(d / "s.yaml")],
     "FileNotFoundError: no small DiT at"),
    ("tune: -o is a folder", lambda d: ["tune", "--min-psnr", "30", "-o", str(d)],
     "ditreduce tune: error: argument -o/--out: '.*' is a folder"),
    ("tune: a model it cannot sample", lambda d: ["tune", "pixart-alpha:64:1", "--min-psnr", "20", "-o",
                                                  str(d / "t.yaml")], "TuneError: tune needs a model it can sample"),
    ("export: OUT under a file", lambda d: ["export", "zoo:pixart_example", "uniform-50", str(d / "file" / "out")],
     "BackendError: export: cannot create the output folder"),
    ("zoo: not a model spec", lambda d: ["zoo", "--models", "notaspec"], "BenchModelError: model 'notaspec'"),
    ("demo: the model file is missing", lambda d: ["demo", "--out", str(d / "demo.png")],
     "FileNotFoundError: no small DiT at"),
    ("demo: --out in a missing folder", lambda d: ["demo", "--out", str(d / "no" / "demo.png")],
     "ditreduce demo: error: argument --out: cannot write"),
]


@pytest.mark.parametrize("case, argv, message", [pytest.param(*f, id=f[0]) for f in FAILURES])
def test_every_failure_is_one_line_on_stderr_and_exit_2(case, argv, message, tmp_path, monkeypatch, capsys):
    import re

    from ditreduce.smalldit import models

    if "PermissionError" in message and not os.path.isdir("/sys"):
        pytest.skip("needs a path no one may write (/sys)")
    (tmp_path / "file").write_text("not json\n")
    monkeypatch.setattr(models, "SMALL_DIT_DIR", tmp_path / "no-small-dit")   # "the model file is missing"
    monkeypatch.delenv("DITREDUCE_TRACEBACK", raising=False)
    code, err = _cli_failure(argv(tmp_path), capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("ditreduce") and " error: " in lines[0] and re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and "usage:" not in err
