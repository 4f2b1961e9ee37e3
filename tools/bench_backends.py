"""Per backend (eager, inductor, onnxruntime, AOTInductor), dense and reduced variant of the same capture:
wall time per call, speedup of reduced over dense within the backend, max |difference| to eager; then the
ONNX Runtime pipeline (an exported manifest sampling the small DiT) against eager sampling (PSNR).

    python tools/bench_backends.py                       # small DiT 64x64 (1024 tokens) + the ORT pipeline
    python tools/bench_backends.py --models pixart-alpha # PixArt-alpha-shaped (hidden 1152, 16 heads), 4096 tokens
    python tools/bench_backends.py --backends eager onnxruntime --repeats 10
    python tools/bench_backends.py --models              # only the ORT pipeline

Prints a markdown table. The reduced variant is `--schedule` at every step; dense is the captured graph.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

BACKENDS = ("eager", "inductor", "onnxruntime", "aotinductor")


def small_dit(batch: int):
    from ditreduce.smalldit.models import load_small_dit

    m = load_small_dit()
    labels = torch.arange(batch) % len(m.class_names)
    kw = dict(hidden_states=torch.randn(batch, 3, 64, 64), encoder_hidden_states=m.captions(labels).detach(),
              timestep=torch.full((batch,), 500.0), return_dict=False)
    return "small DiT 64x64 (1024 tokens)", m.transformer, kw


def pixart_alpha(batch: int, layers: int):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    m = PixArtTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                 num_layers=layers, sample_size=128, patch_size=2, cross_attention_dim=1152,
                                 caption_channels=64, norm_type="ada_norm_single", use_additional_conditions=False,
                                 norm_elementwise_affine=False, norm_eps=1e-6, num_embeds_ada_norm=1000).eval()
    kw = dict(hidden_states=torch.randn(batch, 4, 128, 128), encoder_hidden_states=torch.randn(batch, 8, 64),
              timestep=torch.full((batch,), 500.0), return_dict=False)
    return f"PixArt-alpha-shaped, {layers} blocks, 128x128 latent (4096 tokens)", m, kw


def _runner(backend: str, gm, kw: dict, tmp: Path, name: str):
    """(callable(**kw), seconds to build it: compile / export; inductor compiles lazily on the first call)."""
    t0 = time.perf_counter()
    if backend == "eager":
        fn = gm
    elif backend == "inductor":
        fn = torch.compile(gm, fullgraph=True, dynamic=False)
        with torch.no_grad():
            fn(**kw)
    elif backend == "onnxruntime":
        from ditreduce.backends.onnxruntime import InProcessVariant

        fn = InProcessVariant(gm, kw)
    else:
        from ditreduce.backends.programs import export_program

        pkg = torch._inductor.aoti_compile_and_package(export_program(gm, kw), package_path=str(tmp / f"{name}.pt2"))
        fn = torch._inductor.aoti_load_package(pkg)
    return fn, time.perf_counter() - t0


def _time_pair(fns: dict, kw: dict, repeats: int) -> dict:
    """Median seconds per call of each callable, calls interleaved (dense, reduced, dense, ...) so that load
    changes on a shared machine hit both alike; also each one's output."""
    times = {n: [] for n in fns}
    with torch.no_grad():
        outs = {n: fn(**kw)[0] for n, fn in fns.items()}  # warm-up
        for _ in range(repeats):
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn(**kw)
                times[n].append(time.perf_counter() - t0)
    return {n: (statistics.median(t), outs[n]) for n, t in times.items()}


def bench_model(title, model, kw, schedule: str, backends, repeats: int) -> list[str]:
    from ditreduce import compile_with_reduction
    from ditreduce.backends.programs import run_variants

    sched = {"ratio": 0.5, "rules": [{"steps": [0], "method": "none"}]} if schedule == "uniform-50" else schedule
    reduced = compile_with_reduction(model, sched)
    with torch.no_grad():
        run = run_variants(reduced, 2, kw)
    graphs = {"dense": run.graphs[0], "reduced": run.graphs[-1]}
    rows, ref = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            built = {n: _runner(backend, gm, kw, Path(tmp), n) for n, gm in graphs.items()}
            res = _time_pair({n: b[0] for n, b in built.items()}, kw, repeats)
            if backend == "eager":
                ref = {n: out for n, (_, out) in res.items()}
            (d, d_out), (r, r_out) = res["dense"], res["reduced"]
            dd, rd = (d_out - ref["dense"]).abs().max().item(), (r_out - ref["reduced"]).abs().max().item()
            rows.append(f"| {title} | {backend} | {d * 1e3:.0f} | {r * 1e3:.0f} | {d / r:.2f}x | {dd:.1e} | {rd:.1e} "
                        f"| {built['dense'][1]:.0f} / {built['reduced'][1]:.0f} |")
            print(rows[-1], flush=True)
    return rows


def bench_pipeline(steps: int, samples: int, schedule: str) -> str:
    from ditreduce import compile_with_reduction
    from ditreduce.backends.onnxruntime import load_onnx
    from ditreduce.smalldit.metrics import psnr
    from ditreduce.smalldit.models import load_small_dit
    from ditreduce.smalldit.sampling import sample

    m = load_small_dit()
    labels, seeds = [i % len(m.class_names) for i in range(samples)], list(range(samples))
    example = dict(hidden_states=torch.zeros(2 * samples, 3, 64, 64),
                   encoder_hidden_states=torch.zeros(2 * samples, 4, m.captions.channels),
                   timestep=torch.zeros(2 * samples), return_dict=False)
    reduced = compile_with_reduction(m.transformer, schedule)
    with tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            manifest = reduced.export(tmp, num_steps=steps, **example)
        onnx_model = load_onnx(Path(tmp) / "manifest.json")
        t0 = time.perf_counter()
        got = sample(m, labels, seeds, steps=steps, transformer=onnx_model)
        t_ort = time.perf_counter() - t0
    with reduced.generation(num_steps=steps):
        t0 = time.perf_counter()
        ref = sample(m, labels, seeds, steps=steps, transformer=reduced)
        t_eager = time.perf_counter() - t0
    p = min(psnr(a, b) for a, b in zip(got, ref))
    return (f"ONNX Runtime pipeline, small DiT, `{schedule}`, {steps} steps, {samples} samples (CFG batch "
            f"{2 * samples}), {len(manifest.variants)} variants: min PSNR to eager {p:.1f} dB, max |diff| "
            f"{(got - ref).abs().max().item():.1e}; wall {t_ort:.1f} s (ORT) vs {t_eager:.1f} s (eager)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["small-dit"], choices=["small-dit", "pixart-alpha"])
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--schedule", default="uniform-50")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pixart-layers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--pipeline-steps", type=int, default=20)
    ap.add_argument("--pipeline-schedule", default="uniform-progressive")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} calls, fp32, "
          f"batch {args.batch}, reduced = `{args.schedule}`")
    print("| model | backend | dense ms | reduced ms | speedup | max diff dense | max diff reduced | build s (d / r) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        title, model, kw = small_dit(args.batch) if name == "small-dit" else pixart_alpha(args.batch,
                                                                                             args.pixart_layers)
        bench_model(title, model, kw, args.schedule, args.backends, args.repeats)
    if not args.no_pipeline:
        print(bench_pipeline(args.pipeline_steps, 2, args.pipeline_schedule))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
