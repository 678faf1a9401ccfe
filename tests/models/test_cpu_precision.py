"""bf16 autocast on CPU keeps depthwise convolutions in float32 (``models.cpu_precision``)."""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from torch import nn

from bloodcells.models import module as module_file
from bloodcells.models.backbones import create_backbone
from bloodcells.models.cpu_precision import (
    Float32UnderCpuAutocast,
    cpu_flags,
    is_depthwise,
    keep_depthwise_float32,
    precision_advice,
)
from tests.helpers import fit_with


def lite0() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("tf_efficientnet_lite0", False, None, 0.0).eval()


def test_a_kept_depthwise_layer_computes_exactly_the_float32_convolution_under_autocast():
    torch.manual_seed(0)
    plain = nn.Conv2d(16, 16, 5, padding=2, groups=16)
    kept = copy.deepcopy(plain)
    assert keep_depthwise_float32(kept) == 1
    x = torch.randn(2, 16, 12, 12)
    reference = plain(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered = plain(x)
        out = kept(x)
    assert lowered.dtype == torch.bfloat16  # what autocast does to the layer left alone
    assert out.dtype == torch.float32
    assert torch.equal(out, reference)


def test_pointwise_and_full_convolutions_are_left_to_autocast():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=2))
    assert keep_depthwise_float32(model) == 0  # grouped but not depthwise (groups != in_channels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(1, 3, 9, 9)).dtype == torch.bfloat16


def test_the_swap_keeps_names_weights_outputs_and_conv2d_same_padding():
    model = lite0()
    before = copy.deepcopy(model)
    depthwise = [m for m in model.modules() if is_depthwise(m)]
    kinds = {type(m).__name__ for m in depthwise}
    assert kinds == {"Conv2d", "Conv2dSame"}  # tf_ variants pad like TensorFlow in 4 layers
    assert keep_depthwise_float32(model) == len(depthwise) == 16
    assert keep_depthwise_float32(model) == 0  # idempotent
    assert all(isinstance(m, Float32UnderCpuAutocast) for m in depthwise)
    assert {type(m).original_class.__name__ for m in depthwise} == kinds  # each keeps its own class's forward
    assert all(isinstance(m, type(m).original_class) for m in depthwise)
    assert list(model.state_dict()) == list(before.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), before(x))  # outside autocast nothing changes
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):  # EMA copies, torch.save(model)
        assert [type(m) for m in twin.modules()] == [type(m) for m in model.modules()]
        assert torch.equal(twin(x), before(x))


def test_under_autocast_the_backbone_mixes_bfloat16_pointwise_and_float32_depthwise_layers():
    model = lite0()
    keep_depthwise_float32(model)
    dtypes: dict[str, set[torch.dtype]] = {"depthwise": set(), "pointwise": set()}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            key = "depthwise" if is_depthwise(m) else "pointwise"
            m.register_forward_hook(lambda mod, args, out, key=key: dtypes[key].add(out.dtype))
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(x)
    assert dtypes == {"depthwise": {torch.float32}, "pointwise": {torch.bfloat16}}
    # bf16 pointwise layers: close to the float32 features, not equal to them
    reference = model(x)
    assert not torch.equal(mixed.float(), reference)
    assert torch.allclose(mixed.float(), reference, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("kept", [False, True])
def test_gradients_reach_every_depthwise_weight_under_autocast(kept):
    model = lite0().train()
    if kept:
        keep_depthwise_float32(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 64, 64)).float().sum().backward()
    grads = [m.weight.grad for m in model.modules() if is_depthwise(m)]
    assert all(g is not None and g.dtype == torch.float32 and g.abs().sum() > 0 for g in grads)


def test_cpu_flags_reads_the_flags_line_and_says_none_where_there_is_none(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx512f", "amx_bf16", "amx_tile"}
    cpuinfo.write_text("processor\t: 0\n")
    assert cpu_flags(cpuinfo) is None
    assert cpu_flags(tmp_path / "missing") is None  # not Linux


@pytest.mark.parametrize(
    ("precision", "device", "flags", "says"),
    [
        ("32-true", "cpu", {"avx512f", "amx_bf16"}, "bf16-mixed trained lite0 at 128 px 1.15x faster"),
        ("bf16-mixed", "cpu", {"avx512f", "avx512_bf16"}, "without AMX: slower"),
        ("bf16-mixed", "cpu", {"amx_bf16"}, None),
        ("32-true", "cpu", {"avx2"}, None),
        ("32-true", "cuda", {"amx_bf16"}, None),
        ("32-true", "cpu", None, None),
    ],
)
def test_precision_advice_names_the_faster_choice_only_where_the_configured_one_is_slower(
    precision, device, flags, says
):
    advice = precision_advice(precision, device, flags)
    assert advice is None if says is None else says in advice


def test_a_fit_at_32_true_on_a_cpu_with_amx_logs_the_advice(train_cfg, monkeypatch, caplog):
    monkeypatch.setattr(module_file, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    with caplog.at_level(logging.INFO, logger="bloodcells.train"):
        fit_with(train_cfg("+trainer.fast_dev_run=true", "callbacks=none"))
    assert "this CPU has AMX: trainer.precision=bf16-mixed" in caplog.text
