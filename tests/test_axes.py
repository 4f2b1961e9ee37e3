from ditreduce.passes import axes
from ditreduce.passes.axes import opaque, plain


def test_reshape_merges_and_splits_lattice_axes():
    lab = (plain(("b", 2)), opaque(4), plain(("y", 6)), plain(("x", 10)))
    flat = axes.reshape(lab, (2, 4, 60))
    assert flat[2] == ((("y", 6), ("x", 10)),)
    back = axes.reshape(flat, (2, 4, 6, 10))
    assert back == lab


def test_reshape_patchify_splits_an_axis_into_high_and_low_parts():
    lab = (plain(("b", 2)), opaque(3), plain(("y", 8)), plain(("x", 12)))
    split = axes.reshape(lab, (2, 3, 4, 2, 6, 2))
    assert split[2] == plain(("y", 4)) and split[3] == plain(("y~", 2)) and split[4] == plain(("x", 6))


def test_reshape_that_does_not_factor_gives_none():
    lab = (plain(("y", 6)), plain(("x", 10)))
    assert axes.reshape(lab, (4, 15)) is None


def test_concat_and_slice_segments():
    text = plain(("t:enc", 5))
    img = plain(("y", 3), ("x", 7))
    cat = axes.concat([text, img])
    assert len(cat) == 2 and axes.dim_size(cat) == 26
    assert axes.slice_dim(cat, 5, 26) == img
    assert axes.slice_dim(cat, 0, 5) == text
    assert axes.slice_dim(cat, 3, 10) is None  # cuts through labelled segments


def test_broadcast_prefers_token_labels():
    x = ((plain(("b", 2))), plain(("y", 4), ("x", 4)), opaque(8))
    shift = (plain(("b", 2)), opaque(1), opaque(8))
    out = axes.broadcast((2, 16, 8), [((2, 1, 8), shift), ((2, 16, 8), x)])
    assert out[1] == x[1]
