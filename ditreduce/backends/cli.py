"""CLI subcommands of the backends: `ditreduce export`, `ditreduce check-tensorrt`."""
from __future__ import annotations

import sys

from ..cli_args import positive_int


def cmd_export(args) -> int:
    import torch

    from .. import compile_with_reduction
    from ..cli import _load_target

    model, kw = _load_target(args.model, args.res)
    reduced = compile_with_reduction(model, args.schedule)
    with torch.no_grad():
        m = reduced.export(args.out, num_steps=args.steps, **kw)
    print(f"wrote {args.out}/manifest.json: {len(m.variants)} variants, steps {m.steps}, "
          f"weights {m.weights.path} {m.weights.bytes / 1e6:.1f} MB")
    if args.triton:
        from .triton import write_triton_repository

        repo = write_triton_repository(f"{args.out}/manifest.json", f"{args.out}/triton", args.engines)
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


def add_subcommands(sub) -> None:
    e = sub.add_parser("export", help="one ONNX graph per variant + manifest.json + one shared weights file")
    e.add_argument("model", help="'small-dit' or 'package.module:function' returning (model, example_kwargs)")
    e.add_argument("schedule", help="schedule preset name or YAML path")
    e.add_argument("out", help="output directory")
    e.add_argument("--steps", type=positive_int, default=20, help="number of denoising steps of the run (step map)")
    e.add_argument("--res", type=positive_int, default=64, help="resolution for small-dit")
    e.add_argument("--triton", action="store_true", help="also lay out OUT/triton as a Triton model repository")
    e.add_argument("--engines", default=None, help="engines.json from tools/build_engines.py (Triton: plans)")
    e.set_defaults(fn=cmd_export)
    c = sub.add_parser("check-tensorrt", help="lint every variant of a manifest against TensorRT's ONNX parser")
    c.add_argument("manifest")
    c.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the graphs and weights (huge weights); paths are still checked")
    c.set_defaults(fn=cmd_check_tensorrt)
