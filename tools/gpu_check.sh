#!/usr/bin/env bash
# tools/gpu_check.sh — the CUDA tables of docs/benchmarks.md in one run (about 7-9 min on one H200).
#
#   bash tools/gpu_check.sh                 # on the GPU machine, from the repository root
#   bash tools/gpu_check.sh --dry-run       # the same commands on the CPU at tiny sizes (CI: tests/test_bench.py)
#   DRY_RUN=1 OUT=/tmp/gpu bash tools/gpu_check.sh
#
# What it runs, each written as results.json + a markdown file under one folder ($OUT, else gpu-results/):
#   1. equality/     ratio 0 is the dense output on CUDA: every method, small DiT and PixArt-α shape (1024
#                    tokens), fp32 within 1e-4 (EQ_DTYPES=fp32,bf16 reports bf16 too; max |reduced − dense| per method, one
#                    generation of 2 steps so DiTo's state runs too)
#   2. speed-4096-<backend>/, speed-16384-<backend>/
#                    `ditreduce bench pixart-alpha:4096:2` / `pixart-alpha:16384:1`, dense / coredit / dito /
#                    tome / uniform in attention+proj at ratio 0.5 (all four reduce q and k/v: equal
#                    FLOPs at equal ratio, so --no-equal-flops), every step reduced, $DTYPE (bf16), CUDA
#                    events; backends eager, inductor and cudagraphs (inductor, reduce-overhead), and
#                    onnxruntime (CUDA provider) when its package offers CUDAExecutionProvider; the compiled
#                    ones at 4096 tokens unless COMPILED_TOKENS says more. One bench per backend and token
#                    count, so a failing backend loses only its own table.
#   3. probe-4096/, probe-16384/
#                    `python tools/gpu_probe.py` on the same shapes (eager): per method, wall-clock speedup as
#                    called, of the variant alone and replayed as a CUDA graph, kernel-time speedup, kernel
#                    launches, host-to-device copies and stream syncs per call (run after the eager tables)
#   4. quality-small-dit/
#                    `ditreduce bench small-dit` at 20 steps on 6 seeds, same methods, ratios 0.3,0.5, fp32,
#                    first 20 % of the steps dense (run last)
#   5. summary.md    each step's status and wall time, then every step's results.md
# Steps run in that order under one time budget (BUDGET_S, default 450 s): a step that would start with
# less than its minimum left is skipped and says so in summary.md, and each runs under `timeout`.
# Knobs (environment): METHODS (coredit,dito,tome,uniform), BACKENDS (eager,inductor,cudagraphs; cudagraphs:
# inductor with --inductor-mode reduce-overhead on CUDAGRAPH_METHODS, default coredit,tome,uniform), REPEATS
# (10; 16384 tokens: REPEATS_16384, 3), COMPILED_TOKENS ("4096"; "4096 16384" adds the 16384-token compiled
# tables) and COMPILED_METHODS (METHODS) for the compiled backends, which build one graph per variant.
# Suggested call on one H200: BUDGET_S=540 COMPILED_METHODS=coredit,dito under a 600 s limit.
#
# Wheels. The GPU machine has Python and torch (CUDA) but cannot download. Beside torch, the run needs
# diffusers, pydantic (+ pydantic-core, annotated-types, typing-extensions, typing-inspection), pyyaml,
# safetensors, numpy, scikit-image (+ scipy, imageio, pillow, networkx, lazy-loader, tifffile, packaging),
# tqdm, matplotlib (+ contourpy, cycler, fonttools, kiwisolver, pyparsing, python-dateutil, six) and
# diffusers' own (huggingface-hub, regex, requests, filelock, importlib-metadata); onnxruntime-gpu, onnx and
# onnxscript for the ONNX Runtime table (optional). ditreduce itself runs from this checkout (PYTHONPATH),
# so no wheel of it is needed. Prepare the folder on a machine with the GPU machine's Python version and
# platform, from the repository root:
#
#   PY=3.12   # the GPU machine's python3 --version
#   pip download --only-binary=:all: --python-version $PY --platform manylinux2014_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels/ \
#       "diffusers>=0.42,<0.43" "pydantic>=2.6" "pyyaml>=6" "safetensors>=0.4" "numpy>=1.26" \
#       "scikit-image>=0.24" "tqdm>=4.60" "matplotlib>=3.8"
#   pip download --only-binary=:all: --python-version $PY --platform manylinux_2_28_x86_64 -d wheels/ \
#       onnxruntime-gpu "onnx>=1.17" "onnxscript>=0.3"          # optional: the ONNX Runtime table
#
# and put wheels/ in the repository root (WHEELS=DIR for another folder). The script then runs
#   pip install --no-index --find-links wheels/ <the packages above>
# (torch is never installed: the machine's stays). Without a wheels folder it assumes they are importable.
set -uo pipefail

DRY_RUN=${DRY_RUN:-0}
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (allowed: --dry-run, --help)" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/wheels}
BUDGET_S=${BUDGET_S:-450}
TSCALE=1   # step time limits × this (the dry run's tiny steps get slack on a loaded CPU)
METHODS=${METHODS:-coredit,dito,tome,uniform}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_DISABLE=1 PYTHONWARNINGS=ignore
cd "$ROOT"

if [ "$DRY_RUN" = 1 ]; then
  # the same commands on the CPU at tiny sizes: spelling, plumbing and output layout, not figures
  DEVICE=cpu; DTYPE=${DTYPE:-bf16}; QDTYPE=fp32
  SMALL=small-dit:16; PIX_A=pixart-alpha:256:1; PIX_B=pixart-alpha:64:1; EQ_MODELS=$SMALL
  STEPS=2; SEEDS=1; REPEATS=1; WARMUP=0; BACKENDS=eager; METHODS=${DRY_METHODS:-uniform}
  EQ_METHODS=$METHODS; EQ_DTYPES=fp32; Q_RATIOS=0.5
  EXTRA=(--threads 1 --no-memory); PROBE_CALLS=1; PROBE_REPEATS=1; PROBE_TOKENS=4096
  TSCALE=10; BUDGET_S=${DRY_BUDGET_S:-3000}
else
  DEVICE=cuda; DTYPE=${DTYPE:-bf16}; QDTYPE=${QUALITY_DTYPE:-fp32}
  SMALL=small-dit; PIX_A=pixart-alpha:4096:2; PIX_B=pixart-alpha:16384:1; EQ_MODELS=$SMALL,pixart-alpha:1024:1
  STEPS=20; SEEDS=6; REPEATS=${REPEATS:-10}; WARMUP=2; BACKENDS=${BACKENDS:-eager,inductor,cudagraphs}
  EQ_METHODS=$METHODS,todo,random; EQ_DTYPES=${EQ_DTYPES:-fp32}; Q_RATIOS=0.3,0.5   # EQ_DTYPES=fp32,bf16: bf16 reported
  EXTRA=(); PROBE_CALLS=20; PROBE_REPEATS=5; PROBE_TOKENS="4096 16384"
  if [ -d "$WHEELS" ]; then
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" "diffusers>=0.42,<0.43" "pydantic>=2.6" "pyyaml>=6" \
      "safetensors>=0.4" "numpy>=1.26" "scikit-image>=0.24" "tqdm>=4.60" "matplotlib>=3.8" \
      || { echo "pip install from $WHEELS failed: see the header of $0 for the wheels it needs" >&2; exit 1; }
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" onnxruntime-gpu "onnx>=1.17" "onnxscript>=0.3" 2>/dev/null \
      || echo "(no onnxruntime-gpu wheels in $WHEELS: the ONNX Runtime table is skipped)"
  fi
  "$PY" -c "import diffusers, pydantic, yaml, skimage, tqdm, matplotlib" \
    || { echo "missing packages: put their wheels in $WHEELS (see the header of $0)" >&2; exit 1; }
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "torch sees no CUDA device: run with --dry-run on a CPU machine" >&2; exit 1; }
  if "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" 2>/dev/null; then
    BACKENDS=$BACKENDS,onnxruntime
  fi
fi

START=$SECONDS
STATUS="$OUT/status.md"
echo "| step | status | seconds |" > "$STATUS"
echo "|---|---|---|" >> "$STATUS"
FAILED=0

# step NAME MIN_S MAX_S COMMAND...: run under timeout min(MAX_S, time left); skipped below MIN_S left
step() {
  local name=$1 min=$2 max=$(($3 * TSCALE)); shift 3
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$left" -lt "$min" ]; then
    echo "| $name | skipped: ${left} s of the ${BUDGET_S} s budget left, needs ${min} s | 0 |" >> "$STATUS"
    return
  fi
  local limit=$(( left < max ? left : max )) t0=$SECONDS rc
  echo "== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local what=ok
  if [ $rc = 124 ] || [ $rc = 137 ]; then what="timed out after ${limit} s"; FAILED=1
  elif [ $rc != 0 ]; then what="failed (exit $rc, see $name.log)"; FAILED=1; fi
  echo "| $name | $what | $((SECONDS - t0)) |" >> "$STATUS"
  tail -n 3 "$OUT/$name.log"
}

BENCH=("$PY" -m ditreduce.cli bench --device "$DEVICE" "${EXTRA[@]}")

# 1. ratio 0 == dense on the device, every method (fp32; the bf16 difference is reported too)
step equality 20 120 "$PY" - "$OUT/equality" "$DEVICE" "$EQ_MODELS" "$EQ_METHODS" "$EQ_DTYPES" <<'PY'
import json, sys, pathlib, torch
from ditreduce import compile_with_reduction
from ditreduce.bench.models import resolve_model
from ditreduce.bench.runner import machine_info, place
out, device = pathlib.Path(sys.argv[1]), sys.argv[2]
specs, methods, dtypes = (a.split(",") for a in sys.argv[3:6])
out.mkdir(parents=True, exist_ok=True)
rows, ok = [], True
for dtype, tol in [(d, 1e-4 if d == "fp32" else None) for d in dtypes]:
    for spec in specs:
        bm = place(resolve_model(spec), device, dtype)
        kw = dict(bm.kwargs)
        with torch.no_grad():
            dense = [bm.module(**dict(kw, timestep=kw["timestep"] - 10 * s))[0] for s in range(2)]
            for m in methods:
                red = compile_with_reduction(bm.module, {"method": m, "ratio": 0.0, "scope": "attention+proj"})
                with red.generation(num_steps=2):
                    got = [red(**dict(kw, timestep=kw["timestep"] - 10 * s))[0] for s in range(2)]
                diff = max((g.float() - d.float()).abs().max().item() for g, d in zip(got, dense))
                scale = max(d.float().abs().max().item() for d in dense)
                passed = None if tol is None else diff <= tol * max(1.0, scale)
                ok &= passed is not False
                rows.append(dict(model=spec, dtype=dtype, method=m, max_abs_diff=diff, max_abs_dense=scale,
                                 tolerance=tol, passed=passed))
res = dict(check="ratio 0 == dense, 2 steps in one generation", device=device, machine=machine_info(device),
           command=" ".join(sys.argv), rows=rows, passed=ok)
(out / "results.json").write_text(json.dumps(res, indent=1))
md = [f"Ratio 0 against dense on {res['machine'].get('gpu', device)} ({device}), scope attention+proj, two steps "
      "of one generation; fp32 must agree within 1e-4 × max(1, max |dense|), bf16 is reported.\n",
      "| model | dtype | method | max abs diff | max abs dense | passed |", "|---|---|---|---|---|---|"]
md += [f"| {r['model']} | {r['dtype']} | {r['method']} | {r['max_abs_diff']:.2e} | {r['max_abs_dense']:.2f} | "
       f"{'–' if r['passed'] is None else r['passed']} |" for r in rows]
(out / "results.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
sys.exit(0 if ok else 1)
PY

# 2. speed tables: one bench per token count and backend (a backend that fails loses only its table)
SPEED=(--scopes attention+proj --ratios 0.5 --no-equal-flops --dense-fraction 0 --no-quality
       --dtype "$DTYPE" --warmup "$WARMUP" --steps 20)
# 16384 tokens: REPEATS_16384 repeats (default 3: one 20-step run there is ~20x the 4096 one); compiled
# backends build one graph per variant, so they run COMPILED_TOKENS (default 4096) and COMPILED_METHODS;
# `cudagraphs` is inductor with --inductor-mode reduce-overhead on CUDAGRAPH_METHODS (DiTo, stateful, is refused there)
IFS=, read -r -a BACKEND_LIST <<< "$BACKENDS"
for backend in "${BACKEND_LIST[@]}"; do
  min=15; max=90; tokens_list="4096 16384"; methods=$METHODS; as=("--backends" "$backend")
  if [ "$backend" != eager ]; then
    min=90; max=240; tokens_list=${COMPILED_TOKENS:-4096}; methods=${COMPILED_METHODS:-$METHODS}
  fi
  if [ "$backend" = cudagraphs ]; then
    methods=${CUDAGRAPH_METHODS:-coredit,tome,uniform}; as=(--backends inductor --inductor-mode reduce-overhead)
  fi
  for tokens in $tokens_list; do
    spec=$PIX_A; reps=$REPEATS; tmax=$max
    [ $tokens = 16384 ] && { spec=$PIX_B; reps=${REPEATS_16384:-3}; [ "$DRY_RUN" = 1 ] && reps=1; tmax=$((max * 2)); }
    step "speed-$tokens-$backend" "$min" "$tmax" "${BENCH[@]}" "$spec" "${as[@]}" "${SPEED[@]}" \
      --methods "$methods" --repeats "$reps" --out "$OUT/speed-$tokens-$backend"
  done
  if [ "$backend" = eager ]; then
    # 3. where the eager time goes: launches, host copies, syncs, kernel time, CUDA-graph replay (tools/gpu_probe.py)
    for tokens in $PROBE_TOKENS; do
      spec=$PIX_A; calls=$PROBE_CALLS; [ $tokens = 16384 ] && { spec=$PIX_B; calls=$(( (calls + 1) / 2 )); }
      step "probe-$tokens" 20 90 "$PY" tools/gpu_probe.py "$spec" --methods "$METHODS" --dtype "$DTYPE" \
        --calls "$calls" --repeats "$PROBE_REPEATS" --out "$OUT/probe-$tokens"
    done
  fi
done

# 4. quality of the small DiT (last: on a GPU its small calls are launch-bound, ~150-300 s)
step quality-small-dit 30 300 "${BENCH[@]}" "$SMALL" --methods "$METHODS" --scopes attention+proj --no-equal-flops \
  --ratios "$Q_RATIOS" --steps "$STEPS" --seeds "$SEEDS" --dtype "$QDTYPE" --repeats "$REPEATS" \
  --warmup "$WARMUP" --out "$OUT/quality-small-dit"

# 5. summary: status, then every step's markdown
{
  if [ "$DRY_RUN" = 1 ]; then echo "# gpu_check.sh dry run (CPU, tiny sizes: plumbing only, not figures)"
  else echo "# gpu_check.sh"; fi
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - START)) s; device $DEVICE, speed dtype $DTYPE, quality dtype $QDTYPE; backends $BACKENDS."
  echo
  cat "$STATUS"
  for d in "$OUT"/*/; do
    [ -f "$d/results.md" ] || continue
    echo; echo "## $(basename "$d")"; echo; cat "$d/results.md"
  done
} > "$OUT/summary.md"
echo "wrote $OUT/summary.md in $((SECONDS - START)) s"
exit $FAILED
