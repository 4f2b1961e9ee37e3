"""A call the model itself rejects is a ModelCallError naming the model's error (not "cannot be captured"),
and a capture, failed or not, never replaces the model's parameters or buffers."""
import pytest
import torch

import zoo
from ditreduce import ModelCallError, UnsupportedModelError, compile_with_reduction


def _params(model):
    return {n: (p, p.data_ptr(), p.detach().clone()) for n, p in
            list(model.named_parameters()) + list(model.named_buffers())}


def _assert_untouched(model, before):
    now = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert set(now) == set(before)
    for name, (obj, ptr, val) in before.items():
        assert now[name] is obj, name
        assert type(obj.data) is torch.Tensor and obj.data_ptr() == ptr and torch.equal(obj.detach(), val), name


@pytest.mark.parametrize("bad", [
    lambda kw: dict(kw, hidden_states=kw["hidden_states"].double()),            # wrong dtype
    lambda kw: {k: v for k, v in kw.items() if k != "class_labels"},            # a missing input it needs
])
def test_a_call_the_model_rejects_is_a_model_call_error(bad):
    model, kw = zoo.build("dit")
    before = _params(model)
    with pytest.raises(ModelCallError, match="DiTTransformer2DModel fails on these arguments when run without "
                                             r"ditreduce: (RuntimeError|TypeError)") as e:
        compile_with_reduction(model, "uniform-50")(**bad(kw))
    assert "cannot be captured" not in str(e.value)
    _assert_untouched(model, before)


def test_a_failing_export_leaves_every_parameter_in_place(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    model, kw = zoo.build("dit")
    with torch.no_grad():
        ref = model(**kw)[0]
    before = _params(model)
    real_export = torch.export.export

    def export_that_breaks_the_model(m, *a, **k):
        name, p = next(iter(m.named_parameters()))
        mod = m.get_submodule(name.rpartition(".")[0])
        mod._parameters[name.rpartition(".")[2]] = torch.nn.Parameter(torch.zeros_like(p))  # replaced object
        second = list(m.parameters())[1]
        second.data = FakeTensorMode(allow_non_fake_inputs=True).from_tensor(second.data)  # fake data
        list(m.parameters())[2].data = torch.zeros(1)                                     # other data
        raise RuntimeError("export failed half-way")

    monkeypatch.setattr(torch.export, "export", export_that_breaks_the_model)
    with pytest.raises(UnsupportedModelError, match="export failed half-way"):
        compile_with_reduction(model, "uniform-50")(**kw)
    _assert_untouched(model, before)
    monkeypatch.setattr(torch.export, "export", real_export)
    with torch.no_grad():
        assert torch.equal(model(**kw)[0], ref)
