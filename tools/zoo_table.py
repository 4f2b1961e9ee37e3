"""Print the zoo table: sites found per model family, kinds, lattices and the ratio-0 max abs error.

    python tools/zoo_table.py
"""
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
warnings.filterwarnings("ignore")

import zoo  # noqa: E402

from ditreduce import UnsupportedModelError, compile_with_reduction  # noqa: E402
from ditreduce.schedules import ScheduleError  # noqa: E402


def main():
    print("| model | sites (reduced / found) | kinds | lattice | text tokens | ratio-0 max abs err | ratio-0.5 attn FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for fam in list(zoo.ZOO) + ["lumina2"]:
        model, kw = zoo.lumina2() if fam == "lumina2" else zoo.build(fam)
        if fam != "handdit":
            kw = dict(kw, return_dict=False)
        try:
            with torch.no_grad():
                ref = model(**kw)[0]
                out = compile_with_reduction(model, "identity")(**kw)[0]
                half = compile_with_reduction(model, "uniform-50", **kw)
            rep = half.report()
            d, r = rep.totals()
            kinds = ", ".join(sorted({x.kind for x in rep}))
            grids = ", ".join(sorted({"x".join(map(str, x.grid)) for x in rep if x.grid}))
            texts = ", ".join(sorted({str(x.text_tokens) for x in rep if x.reduced}))
            print(f"| {fam} | {sum(x.reduced for x in rep)} / {len(rep)} | {kinds} | {grids} | {texts} | "
                  f"{(out - ref).abs().max().item():.1e} | {r / d:.2f}× |")
        except (UnsupportedModelError, ScheduleError) as e:
            print(f"| {fam} | – | – | – | – | {type(e).__name__}: {str(e).splitlines()[0][:90]} | – |")


if __name__ == "__main__":
    main()
