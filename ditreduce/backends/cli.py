"""CLI subcommands of the backends: `ditreduce export`, `ditreduce check-tensorrt`, `ditreduce build-engines`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli_args import MODEL_SPEC_HELP, positive_int


def batch_range(text: str) -> tuple[int, int, int]:
    """`MIN,OPT,MAX`: three integers >= 1 with MIN <= OPT <= MAX (an argparse type)."""
    try:
        b = tuple(int(x) for x in text.split(","))
    except ValueError:
        b = ()
    if len(b) != 3 or b[0] < 1 or not b[0] <= b[1] <= b[2]:
        raise argparse.ArgumentTypeError(f"MIN,OPT,MAX expected (integers >= 1, MIN <= OPT <= MAX), got {text!r}")
    return b


def cmd_export(args) -> int:
    import torch

    from .. import compile_with_reduction
    from ..model_specs import resolve_model

    out = Path(args.out)   # printed paths without the trailing slash a shell completion leaves: out/manifest.json
    bm = resolve_model(args.model, args.res)
    reduced = compile_with_reduction(bm.module, args.schedule)
    with torch.no_grad():
        m = reduced.export(out, num_steps=args.steps, **bm.kwargs)
    print(f"wrote {out / 'manifest.json'}: {len(m.variants)} variants, steps {m.steps}, "
          f"weights {out / m.weights.path} {m.weights.bytes / 1e6:.1f} MB")
    if args.triton:
        from .triton import write_triton_repository

        repo = write_triton_repository(out / "manifest.json", out / "triton", args.engines)
        print(f"wrote Triton model repository {repo}")
    return 0


def cmd_check_tensorrt(args) -> int:
    from .lint import lint_manifest

    findings = lint_manifest(args.manifest, verify=not args.no_verify)
    for f in findings:
        print(f)
    if findings:
        print(f"{len(findings)} finding(s): TensorRT's ONNX parser would reject or mis-build these graphs",
              file=sys.stderr)
        return 1
    print(f"ok: every variant of {args.manifest} passes the TensorRT lint")
    return 0


def cmd_build_engines(args) -> int:
    from .trt_build import build_engines

    path = build_engines(args.manifest, args.out, args.precision, args.batch, not args.no_refit, args.strip_weights)
    print(f"wrote {path}")
    return 0


def add_subcommands(sub) -> None:
    e = sub.add_parser("export", help="one ONNX graph per variant + manifest.json + one shared weights file")
    e.add_argument("model", help=MODEL_SPEC_HELP)
    e.add_argument("schedule", help="schedule preset name or YAML path")
    e.add_argument("out", help="output directory")
    e.add_argument("--steps", type=positive_int, default=20, help="number of denoising steps of the run (step map)")
    e.add_argument("--res", type=positive_int, default=64, help="small-dit's resolution when the spec has none")
    e.add_argument("--triton", action="store_true", help="also lay out OUT/triton as a Triton model repository")
    e.add_argument("--engines", default=None, help="engines.json from `ditreduce build-engines` (Triton: plans)")
    e.set_defaults(fn=cmd_export)
    c = sub.add_parser("check-tensorrt", help="lint every variant of a manifest against TensorRT's ONNX parser")
    c.add_argument("manifest")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the graphs and weights (huge weights); paths are still checked")
    c.set_defaults(fn=cmd_check_tensorrt)
    from .trt_build import PRECISIONS

    b = sub.add_parser("build-engines", help="one TensorRT engine per variant of an exported manifest + engines.json "
                                             "(needs TensorRT and an NVIDIA GPU)",
                       description="Build one TensorRT engine per variant of a manifest written by `ditreduce export` "
                                   "and write OUT/engines.json. Needs TensorRT and a CUDA GPU; without them, "
                                   "`ditreduce check-tensorrt MANIFEST` lints the graphs.")
    b.add_argument("manifest", help="manifest.json written by reduced.export / `ditreduce export`")
    b.add_argument("--precision", choices=PRECISIONS, default="fp16")
    b.add_argument("--out", default="engines", help="output directory (plans + engines.json)")
    b.add_argument("--batch", type=batch_range, default=None, help="MIN,OPT,MAX batch for the optimisation profile "
                                                                   "(graphs exported with a dynamic batch dim only)")
    b.add_argument("--no-refit", action="store_true", help="plain engines (not refittable)")
    b.add_argument("--strip-weights", action="store_true",
                   help="weight-stripped plans, refitted from the shared ONNX weights file at load")
    b.set_defaults(fn=cmd_build_engines)
