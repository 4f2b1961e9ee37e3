"""The supported-models table: tiny random-weight configs of diffusers' image / video transformer classes
(`tiny.py`, `more.py`; configs follow each class's own __init__ arguments, shrunk to 1-2 layers and a few
heads; inputs are what the pipelines pass), and `ditreduce zoo`, which prints, per class, the sites the
passes find, their kinds and lattices, the ratio-0 max abs error against the plain model, and the
attention FLOPs left at ratio 0.5.

    ditreduce zoo                                  # every class (a few minutes on a CPU)
    ditreduce zoo --classes pixart,flux            # some of them (zoo names)
    ditreduce zoo --models pkg.mod:make            # rows for model specs only (see ditreduce.model_specs)
    PYTHONPATH=tests ditreduce zoo --classes all --models zoo:handdit anydit:origdit   # both (docs/models.md)
"""
from __future__ import annotations

import inspect
import sys
import warnings

HEADER = ("| model (zoo name) | sites (reduced / found) | kinds | lattice | text tokens | ratio-0 max abs err | "
          "ratio-0.5 attn FLOPs |\n|---|---|---|---|---|---|---|")


def builders() -> dict:
    """zoo name -> builder(grid=..., batch=..., seed=...) -> (model, kwargs), in table order."""
    from .more import MORE
    from .tiny import TINY

    return {**TINY, **MORE}


def video() -> set[str]:
    """The zoo names whose lattice is (frames, h, w)."""
    from .more import VIDEO as more
    from .tiny import VIDEO as tiny

    return tiny | more


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def row(label: str, model, kw: dict) -> str:
    """One table row: the reduced / found sites of `uniform-50`, their kinds, lattices and text tokens, the
    ratio-0 max abs error against the plain model and the attention FLOPs left at ratio 0.5 — or the named
    error that says why the model is not reduced."""
    import torch

    from .. import UnsupportedModelError, compile_with_reduction
    from ..errors import LayoutError, ScheduleError

    name = type(model).__name__
    if "return_dict" in inspect.signature(model.forward).parameters:
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
        return (f"| {name} ({label}) | {sum(x.reduced for x in rep)} / {len(rep)} | {kinds} | {grids} | {texts} | "
                f"{(out - ref).abs().max().item():.1e} | {r / d:.2f}× |")
    except (UnsupportedModelError, ScheduleError, LayoutError) as e:
        lines = str(e).splitlines()
        why = lines[0] if isinstance(e, UnsupportedModelError) else "; ".join(x.strip() for x in lines[1:3])
        return f"| {name} ({label}) | – | – | – | – | {type(e).__name__}: {why[:160]} | – |"


def cmd_zoo(args) -> int:
    from ..model_specs import resolve_model

    if args.classes is None:
        names = [] if args.models else list(builders())
    else:
        names = list(builders()) if "all" in args.classes else args.classes
    print(HEADER, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fam in names:
            print(row(fam, *builders()[fam]()), flush=True)
        for spec in args.models:
            bm = resolve_model(spec)
            print(row(spec, bm.module, bm.kwargs), flush=True)
    return 0


def add_subcommands(sub) -> None:
    from ..cli_args import MODEL_SPEC_HELP, name_list

    z = sub.add_parser("zoo", help="the supported-models table: sites, kinds, lattices and ratio-0 error of "
                                   "tiny configs of diffusers' transformer classes",
                       description=sys.modules[__name__].__doc__.split("\n\n")[0])
    z.add_argument("--classes", type=name_list(lambda: ["all", *builders()]), default=None,
                   help="comma-separated zoo names, or all (the default unless --models is given); e.g. dit,pixart,flux")
    z.add_argument("--models", nargs="*", default=[], metavar="SPEC", help=f"extra rows: {MODEL_SPEC_HELP}")
    z.set_defaults(fn=cmd_zoo)
