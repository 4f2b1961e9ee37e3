"""Per-call time of the small DiT (batch 2, 1024 tokens, 1 thread): dense, tome, dito match and reduce steps.

    python tools/dito_phases.py
"""
import statistics, time, torch
torch.set_num_threads(1)
from ditreduce import compile_with_reduction
from ditreduce.smalldit.models import load_small_dit
m = load_small_dit()
tr = m.transformer
kw = dict(hidden_states=torch.randn(2, 3, 64, 64), encoder_hidden_states=m.captions(torch.tensor([1, 2])),
          timestep=torch.tensor([500.0, 500.0]), return_dict=False)
def sched(method):
    return {"version": 1, "method": method, "ratio": 0.5, "scope": "attention", "num_steps": 20,
            "rules": [{"step_fraction": {"start": 0.0, "stop": 0.2}, "method": "none"}]}
def timeit(fn, n=7):
    fn(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3
with torch.no_grad():
    print("dense      %.1f ms" % timeit(lambda: tr(**kw)))
    r = compile_with_reduction(tr, sched("tome")); r.set_step(5, 20)
    print("tome 0.5   %.1f ms" % timeit(lambda: r(**kw)))
    d = compile_with_reduction(tr, sched("dito"))
    for step, what in ((4, "match"), (5, "reduce")):
        d.set_step(step, 20)
        t = timeit(lambda: d(**kw))
        print("dito 0.5 %-6s %.1f ms  (phase %s)" % (what, t, dict(d.last_key[0].params)["phase"]))
