"""Print the zoo table: sites found per model, kinds, lattices and the ratio-0 max abs error, for every
builder in tests/zoo.py, tests/zoo_more.py (diffusers classes) and tests/anydit.py (research-style DiTs).

    python tools/zoo_table.py [family ...]
"""
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

import anydit  # noqa: E402
import zoo  # noqa: E402
import zoo_more  # noqa: E402

from ditreduce import UnsupportedModelError, compile_with_reduction  # noqa: E402
from ditreduce.passes.layout import LayoutError  # noqa: E402
from ditreduce.schedules import ScheduleError  # noqa: E402

BUILDERS = {**{f: (lambda f=f: zoo.build(f)) for f in zoo.ZOO}, "lumina2": zoo.lumina2,
            **zoo_more.MORE, **anydit.HAND}


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def row(fam) -> str:
    model, kw = BUILDERS[fam]()
    name = type(model).__name__
    if "return_dict" in __import__("inspect").signature(model.forward).parameters:
        kw = dict(kw, return_dict=False)
    try:
        with torch.no_grad():
            ref = _first(model(**kw))
            out = _first(compile_with_reduction(model, "identity")(**kw))
            half = compile_with_reduction(model, "uniform-50", **kw)
        rep = half.report()
        d, r = rep.totals()
        kinds = ", ".join(sorted({x.kind for x in rep}))
        grids = ", ".join(sorted({"x".join(map(str, x.grid)) for x in rep if x.grid and x.reduced}))
        texts = ", ".join(sorted({"per sample" if x.text_tokens < 0 else str(x.text_tokens) for x in rep if x.reduced}))
        return (f"| {name} ({fam}) | {sum(x.reduced for x in rep)} / {len(rep)} | {kinds} | {grids} | {texts} | "
                f"{(out - ref).abs().max().item():.1e} | {r / d:.2f}× |")
    except (UnsupportedModelError, ScheduleError, LayoutError) as e:
        lines = str(e).splitlines()
        why = lines[0] if isinstance(e, UnsupportedModelError) else "; ".join(x.strip() for x in lines[1:3])
        return f"| {name} ({fam}) | – | – | – | – | {type(e).__name__}: {why[:160]} | – |"


def main():
    fams = sys.argv[1:] or list(BUILDERS)
    print("| model (zoo name) | sites (reduced / found) | kinds | lattice | text tokens | ratio-0 max abs err | "
          "ratio-0.5 attn FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for fam in fams:
        print(row(fam), flush=True)


if __name__ == "__main__":
    main()
