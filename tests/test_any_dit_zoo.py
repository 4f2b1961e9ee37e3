"""The grown diffusers zoo (tests/zoo_more.py): ratio 0 is the dense output for every class that works,
with the expected sites; the classes that cannot work raise the named error that says why."""
import pytest
import torch

import zoo_more
from ditreduce import ScheduleError, UnsupportedModelError, compile_with_reduction

# family -> (reduced sites, found sites, kind, lattice, text tokens of the reduced sites — or a set of them)
WORKS = {
    "transformer2d": (1, 2, "self", (4, 4), 0), "latte": (1, 3, "self", (4, 4), 0),
    "allegro": (1, 2, "self", (2, 4, 4), 0), "auraflow": (2, 2, "joint", (4, 4), 6),
    "cogview3plus": (1, 1, "joint", (4, 4), 6), "cogview4": (1, 1, "joint", (4, 4), 6),
    "chroma": (2, 2, "joint", (4, 4), 6), "ovis": (2, 2, "joint", (4, 4), 6), "longcat": (2, 2, "joint", (4, 4), 6),
    "bria": (2, 2, "joint", (4, 4), 6), "flux2": (2, 2, "joint", (4, 4), 6), "ltx": (1, 2, "self", (2, 4, 4), 0),
    "hunyuanvideo": (2, 3, "joint", (2, 4, 4), 6), "luminanext": (1, 2, "self", (4, 4), 0),
    "skyreels": (2, 4, "self", (2, 4, 4), 0), "chronoedit": (2, 4, "self", (2, 4, 4), 0),
    "wanvace": (3, 6, "self", (2, 4, 4), 0), "easyanimate": (1, 1, "joint", (2, 4, 4), 6),
    "hunyuanimage": (2, 3, "joint", (4, 4), 6), "motifvideo": (2, 2, "joint", (2, 4, 4), 6),
    "joyimage": (1, 1, "joint", (2, 4, 4), 6), "dreamlite": (1, 2, "self", (4, 4), 0),
    "consisid": (1, 1, "joint", (2, 4, 4), 6),
    "krea2": (1, 3, "joint", (4, 4), 5),
    "ernie": (1, 1, "joint", (4, 4), 6), "briafibo": (2, 2, "joint", (4, 4), 6), "glmimage": (1, 1, "joint", (4, 4), 6), "helios": (1, 2, "self", (2, 4, 4), 0),
    "kandinsky5": (1, 3, "self", (2, 4, 4), 0),  # latent [B, F, H, W, C]
    "anyflow": (1, 2, "self", (2, 4, 4), 0),  # latent [B, F, C, H, W], per-frame timesteps  # lattice from the last 16 rows of position_ids ([text | image])
    "flux3": (2, 4, {("self", (4, 4), 0), ("joint", (4, 4), 6)}),  # the image_cond block does not run here
    "mochi": (2, 3, "joint", (2, 4, 4), -1),  # per sample over [image | its valid text]: text length at run time
}
# family -> (named error, what its message says)
FAILS = {
    "sanavideo": (ScheduleError, "linear attention"),
    "prx": (ScheduleError, "cross-attention"),
    "nucleusmoe": (ScheduleError, "cross-attention"),  # queries: image tokens; keys: [text | image]
    "zimage": (ScheduleError, "lost at aten.pad_sequence"),
    "hidream": (UnsupportedModelError, "HiDreamImageTransformer2DModel cannot be captured"),
    "hunyuanvideo15": (UnsupportedModelError, "HunyuanVideo15Transformer3DModel cannot be captured"),  # if all(x == 0)
}
SLOW = {"briafibo", "anyflow", "hunyuanimage", "flux3", "chroma", "ovis", "longcat", "bria", "flux2", "hunyuanvideo", "skyreels", "chronoedit", "wanvace", "hidream",
        "zimage"}


def _param(fam):
    return pytest.param(fam, marks=pytest.mark.slow) if fam in SLOW else fam


@pytest.mark.parametrize("family", [_param(f) for f in sorted(WORKS)])
def test_ratio_zero_is_equivalence_with_the_expected_sites(family):
    model, kw = zoo_more.MORE[family]()
    kw = dict(kw, return_dict=False)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
    with torch.no_grad():
        ref, out = model(**kw)[0], reduced(**kw)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    rep = reduced.report()
    n_red, n_found, *layouts = WORKS[family]
    layouts = layouts[0] if len(layouts) == 1 else {tuple(layouts)}
    assert (sum(r.reduced for r in rep), len(rep)) == (n_red, n_found)
    assert {(r.kind, r.grid, r.text_tokens) for r in rep if r.reduced} == layouts
    assert all(r.skip_reason for r in rep if not r.reduced)  # every skipped site says why


@pytest.mark.parametrize("family", [_param(f) for f in sorted(FAILS)])
def test_classes_that_cannot_work_raise_the_named_error(family):
    model, kw = zoo_more.MORE[family]()
    err, says = FAILS[family]
    with pytest.raises(err, match=says), torch.no_grad():
        compile_with_reduction(model, "uniform-50")(**kw)


@pytest.mark.parametrize("family,grid", [("ltx", (3, 2, 5)), ("auraflow", (3, 5)), ("cogview4", (5, 3))])
def test_odd_lattices(family, grid):
    model, kw = zoo_more.MORE[family](grid=grid, batch=1)
    reduced = compile_with_reduction(model, {"method": "uniform", "ratio": 0.0})
    with torch.no_grad():
        torch.testing.assert_close(reduced(**kw, return_dict=False)[0], model(**kw, return_dict=False)[0],
                                   rtol=1e-5, atol=1e-5)
    assert {r.grid for r in reduced.report() if r.reduced} == {grid}
