"""Where a reduced call's time goes on a CUDA device: launch overhead, host syncs or kernels.

    python tools/gpu_probe.py pixart-alpha:4096:2 --methods coredit,dito,tome,uniform --dtype bf16

Per method (attention+proj, ratio 0.5, every step reduced) it times, with CUDA events over --calls calls after
a warm-up, medians of --repeats interleaved rounds:
  dense      the model itself;
  call       the reduced model as users call it (ReducedModel.forward: step clock, variant choice, state);
  variant    the variant's runner alone (no step clock);
  graph      the variant's runner captured once as a CUDA graph and replayed (what launch overhead hides:
             the kernels' own time), and the dense model likewise (dense graph);
and profiles one round of `variant` (CPU and CUDA activities): host time, device time (kernels and copies),
kernel launches, host-to-device copies and stream syncs per call. The summary table's "kernel time" is dense's
device time over the variant's: the speedup once launch overhead is hidden. Stateful variants (DiTo's reduce step) run on the state the call left.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ditreduce import compile_with_reduction
from ditreduce.bench.device import place
from ditreduce.model_specs import resolve_model


def timed(fn, calls: int) -> float:
    if not torch.cuda.is_available():   # a dry run of the script on the CPU
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls / 1e3


def graphed(fn):
    """fn captured as one CUDA graph (after warm-up on a side stream); None with the reason when it cannot be."""
    if not torch.cuda.is_available():
        return None, "no CUDA"
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(g):
            fn()
    except Exception as e:  # noqa: BLE001 - the reason is the result
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return g.replay, ""


def profile_call(fn, calls: int) -> dict:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    ev = prof.key_averages()
    host = sum(e.self_cpu_time_total for e in ev) / calls / 1e3
    kernel = sum(e.self_device_time_total for e in ev if e.device_type == torch.autograd.DeviceType.CUDA) / calls / 1e3
    launches = sum(e.count for e in ev if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                     "cuLaunchKernelEx")) / calls
    d2h = sum(e.count for e in ev if "DtoH" in e.key or e.key in ("aten::item", "aten::_local_scalar_dense")) / calls
    h2d = sum(e.count for e in ev if "HtoD" in e.key) / calls
    syncs = sum(e.count for e in ev if "Synchronize" in e.key) / calls
    top = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]
    return dict(host_ms=host, kernel_ms=kernel, launches=launches, d2h=d2h, h2d=h2d, syncs=syncs,
                top=[(e.key, e.count / calls, e.self_cpu_time_total / calls / 1e3) for e in top])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a bench model spec (pixart-alpha:4096:2, small-dit, ...)")
    ap.add_argument("--methods", default="coredit,dito,tome,uniform")
    ap.add_argument("--scope", default="attention+proj")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="eager", choices=("eager", "inductor"))
    ap.add_argument("--mode", default="default", help="inductor: torch.compile mode (reduce-overhead: CUDA graphs)")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md (the summary table)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bm = place(resolve_model(args.model), device, args.dtype)
    kw = bm.kwargs
    torch.set_grad_enabled(False)
    rows = {}
    module = bm.module if args.backend == "eager" else torch.compile(bm.module, mode=args.mode)
    dense = lambda: module(**kw)  # noqa: E731
    for _ in range(3):
        dense()
    eager = args.backend == "eager"   # a compiled function is not captured again (reduce-overhead: it is one)
    dense_graph, why = graphed(dense) if eager else (None, "not captured (compiled)")
    title = (f"{args.model}, {args.scope} r={args.ratio}, {args.dtype}, {args.backend} ({args.mode}), on "
             f"{torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}")
    print(f"{title}; dense graph: {why or 'captured'}")
    for m in args.methods.split(","):
        red = compile_with_reduction(bm.module, {"method": m, "ratio": args.ratio, "scope": args.scope,
                                                 "num_steps": 20}, backend=args.backend,
                                     backend_options={"mode": args.mode} if args.backend == "inductor" else None)
        red.set_step(19, 20)
        red(**kw)
        cap = red.last_capture
        run = red.runner(cap, red.last_key, kw)
        state = red.variant(cap, red.last_key).meta.get("ditreduce_state")
        vkw = kw if state is None or not state["inputs"] else dict(
            kw, state=red.generations.current.state.feed(state["inputs"], 19, 0, red.device, zeros_if_missing=True))
        fns = {"call": lambda: red(**kw), "variant": lambda: run(**vkw)}
        fns["graph"], why = graphed(fns["variant"]) if eager else (None, "not captured (compiled)")
        times = {k: [] for k in ["dense", "dense graph", *fns]}
        for _ in range(args.repeats):
            times["dense"].append(timed(dense, args.calls))
            if dense_graph is not None:
                times["dense graph"].append(timed(dense_graph, args.calls))
            for k, fn in fns.items():
                if fn is not None:
                    times[k].append(timed(fn, args.calls))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
        prof = profile_call(fns["variant"], args.calls)
        pd = profile_call(dense, args.calls)
        rows[m] = dict(ms=med, speedup=None, kernel_ms=prof["kernel_ms"], dense_kernel_ms=pd["kernel_ms"],
                       launches=prof["launches"], dense_launches=pd["launches"], h2d=prof["h2d"], syncs=prof["syncs"])
        print(f"\n== {m}: ms per call (median of {args.repeats} x {args.calls} calls); graph capture: {why or 'ok'}")
        print("  " + "  ".join(f"{k} {v:.3f}" for k, v in med.items()))
        sp = {k: med["dense"] / med[k] for k in ("call", "variant") if k in med}
        if "graph" in med and "dense graph" in med:
            sp["graph"] = med["dense graph"] / med["graph"]
        print("  speedup vs dense: " + "  ".join(f"{k} {v:.2f}x" for k, v in sp.items()))
        rows[m]["speedup"] = sp
        for name, p in (("variant", prof), ("dense", pd)):
            print(f"  profile {name}: host {p['host_ms']:.2f} ms, kernels {p['kernel_ms']:.3f} ms, "
                  f"{p['launches']:.0f} launches, {p['h2d']:.1f} host-to-device copies, {p['d2h']:.1f} device-to-host "
                  f"reads, {p['syncs']:.1f} syncs per call")
        print("  top host ops (variant): " + "; ".join(f"{k} x{c:.0f} {t:.3f} ms" for k, c, t in prof["top"]))
    table = summary(args, device, rows)
    print("\n" + table)
    if args.out:
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(dict(command=" ".join(sys.argv), device=title, rows=rows), indent=1))
        (out / "results.md").write_text(f"`python {' '.join(sys.argv)}`\n\n{title}\n\n{table}\n")


def summary(args, device: str, rows: dict) -> str:
    """One markdown row per method: wall-clock and kernel-time speedups, launches and host copies per call."""
    lines = ["| method | dense ms | call | variant | CUDA graph | kernel time | launches dense → red. | "
             "host→device copies | syncs |", "|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows.items():
        sp = r["speedup"]
        lines.append(f"| {m} | {r['ms']['dense']:.2f} | {sp['call']:.2f}× | {sp['variant']:.2f}× | "
                     + (f"{sp['graph']:.2f}×" if "graph" in sp else "–")
                     + f" | {r['dense_kernel_ms'] / r['kernel_ms']:.2f}× ({r['kernel_ms']:.2f} ms) | "
                       f"{r['dense_launches']:.0f} → {r['launches']:.0f} | {r['h2d']:.0f} | {r['syncs']:.0f} |"
                     if device == "cuda" else f"| {m} | {r['ms']['dense']:.2f} | {sp['call']:.2f}× | "
                     f"{sp['variant']:.2f}× | – | – | – | – | – |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
