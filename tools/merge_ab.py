"""Before / after of the local-window merge in ONE interleaved loop with dense, on the PixArt-α shape: the old path
(28-slot gather merge, q/k/v reduced in [B, H, L, D] rows, similarity on a normalised copy) is switched in at call
time around the same variant graphs. Usage: python tools/merge_ab.py TOKENS BLOCKS REPEATS METHODS SCOPES
(e.g. 4096 1 3 tome,dito,coredit attention+proj,attention); writes merge_ab_TOKENS_BLOCKS.json."""
import sys, json, statistics, contextlib, torch
import torch.nn.functional as F
import ditreduce.regions as R
import ditreduce.methods.tome as T
import ditreduce.methods.dito as D
from ditreduce.bench.models import pixart_alpha
from ditreduce.bench.runner import Variants, make_schedule, compile_for, _is_dense_key
from ditreduce.bench.flops import count_flops
from ditreduce.bench import speed

tokens, blocks, repeats = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
methods = sys.argv[4].split(","); scopes = sys.argv[5].split(",")
NEW = {"ms": T.merge_selection, "rh": R._reduce_heads, "ls": T._local_similarity}

def old_ms(*a, **k):
    return NEW["ms"](*a, **k)._replace(wtok=None, wmix=None)

def old_rh(x, sel):
    return R.reduce_tokens(x, sel)

def old_ls(u, t):
    u = F.normalize(u.float(), dim=-1)
    b, c, nw = u.shape[0], u.shape[-1], t["nw"]
    us = u.index_select(1, t["win_srcs"]).reshape(b * nw, 3, c)
    ud = u.index_select(1, t["win_cand"]).reshape(b * nw, 9, c)
    return torch.bmm(us, ud.transpose(1, 2)).reshape(b, nw * 3, 9).index_select(1, t["src_pos"])

@contextlib.contextmanager
def mode(old):
    if old:
        T.merge_selection = D.merge_selection = old_ms; R._reduce_heads = old_rh
        T._local_similarity = D._local_similarity = old_ls
    try:
        yield
    finally:
        T.merge_selection = D.merge_selection = NEW["ms"]; R._reduce_heads = NEW["rh"]
        T._local_similarity = D._local_similarity = NEW["ls"]

def wrap(fn, old):
    def f():
        with mode(old):
            return fn()
    return f

bm = pixart_alpha(tokens, blocks)
with torch.no_grad():
    dense_fl = count_flops(lambda: bm.module(**bm.kwargs))
fns = {"dense": lambda: bm.module(**bm.kwargs)}
info = {}
ratios = {"tome": 0.5, "dito": 0.5, "coredit": 0.5}
for m in methods:
    for s in scopes:
        v = Variants(compile_for(bm.module, make_schedule(m, ratios[m], s, 0.0), "eager"), bm.kwargs, 20)
        for vi, key in enumerate(v.keys):
            if _is_dense_key(key):
                continue
            with torch.no_grad():
                fl = count_flops(v.caller(vi))
            name = f"{m}|{s}|{vi}"
            info[name] = {"ideal": dense_fl.whole / fl.whole, "phase": dict(next(c for c in key if c).params).get("phase", "-")}
            for old in (True, False):
                fns[name + ("|old" if old else "|new")] = wrap(v.caller(vi), old)
                with torch.no_grad():
                    fns[name + ("|old" if old else "|new")]()  # warm each mode once
times = speed.interleaved_times(fns, repeats, warmup=0)
rows = []
for name, i in info.items():
    r = {"config": name, "phase": i["phase"], "ideal": round(i["ideal"], 3)}
    for md in ("old", "new"):
        sp = speed.per_repeat_speedups(times["dense"], times[f"{name}|{md}"])
        r[md] = round(statistics.median(sp), 3); r[md + "_range"] = [round(min(sp), 3), round(max(sp), 3)]
        r[md + "_frac"] = round(r[md] / i["ideal"], 3)
    rows.append(r); print(json.dumps(r), flush=True)
print("dense_s", [round(t, 2) for t in times["dense"]])
json.dump({"rows": rows, "times": times}, open(f"merge_ab_{tokens}_{blocks}.json", "w"))
