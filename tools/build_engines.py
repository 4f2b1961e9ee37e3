"""Build one TensorRT engine per variant of an exported manifest and write engines/engines.json.

    python tools/build_engines.py OUT/manifest.json --precision fp16 --out engines/
    python tools/build_engines.py OUT/manifest.json --precision fp16 --strip-weights --out engines/

Needs TensorRT and an NVIDIA GPU. Without them: `ditreduce check-tensorrt OUT/manifest.json`.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from ditreduce.backends import BackendError
    from ditreduce.backends.trt_build import PRECISIONS, build_engines

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", help="manifest.json written by reduced.export / `ditreduce export`")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp16")
    ap.add_argument("--out", default="engines")
    ap.add_argument("--batch", default=None, help="MIN,OPT,MAX batch for the optimisation profile "
                                                  "(graphs exported with a dynamic batch dim only)")
    ap.add_argument("--no-refit", action="store_true", help="plain engines (not refittable)")
    ap.add_argument("--strip-weights", action="store_true",
                    help="weight-stripped plans, refitted from the shared ONNX weights file at load")
    args = ap.parse_args(argv)
    batch = tuple(int(b) for b in args.batch.split(",")) if args.batch else None
    try:
        path = build_engines(args.manifest, args.out, args.precision, batch, not args.no_refit, args.strip_weights)
    except BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
