"""The student's convolutions as one matrix multiply (bksdm.distill.gemm_conv): the same sums, picked by
shape and compute dtype, switched by speed.gemm_convolutions."""

import pytest
import torch
from helpers.module import fit, make_module
from torch import nn

from bksdm.distill import gemm_conv
from bksdm.distill.gemm_conv import GemmConv2d, conv2d_as_gemm, gemm_pays, use_gemm_convolutions
from bksdm.distill.speed import SpeedSettings


@pytest.mark.parametrize(
    ("batch", "size", "kernel", "stride", "padding", "dilation", "bias", "channels_last"),
    [
        (1, 4, 3, 1, 1, 1, True, False),  # the inner stages' 3x3 convolutions
        (3, 5, 3, 2, 1, 1, True, False),  # a downsampler, odd size
        (2, 6, 1, 1, 0, 1, False, False),  # a 1x1 shortcut
        (2, 7, 3, 1, 2, 2, True, True),  # dilated, NHWC
    ],
)
def test_the_gemm_convolution_is_the_direct_one_with_its_gradients(
    batch, size, kernel, stride, padding, dilation, bias, channels_last
):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, kernel, stride, padding, dilation, bias=bias).double()
    inputs = torch.randn(batch, 6, size, size + 1, dtype=torch.float64)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    results = []
    for compute in (conv._conv_forward, lambda x, w, b: conv2d_as_gemm(conv, x, w, b)):
        x = inputs.clone().requires_grad_()
        out = compute(x, conv.weight, conv.bias)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                    [x, *conv.parameters()])  # fmt: skip
        results.append((out, *grads))
    assert results[1][0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for direct, gemm in zip(*results, strict=True):
        torch.testing.assert_close(gemm, direct, rtol=1e-12, atol=1e-12)


def test_the_rule_picks_deep_narrow_convolutions_computed_in_low_precision_on_a_cpu():
    inner = nn.Conv2d(1280, 1280, 3, padding=1)
    small = torch.empty(1, 1280, 4, 4)
    with torch.autocast("cpu", torch.bfloat16):
        assert gemm_pays(inner, small)  # K = 11,520 against 16 pixels
        assert gemm_pays(inner, torch.empty(4, 1280, 8, 8))  # 256 pixels: 45 rows each
        assert not gemm_pays(inner, torch.empty(8, 1280, 8, 8))  # 512 pixels
        assert not gemm_pays(nn.Conv2d(320, 320, 3, padding=1), torch.empty(1, 320, 32, 32))
        assert not gemm_pays(nn.Conv2d(1280, 1280, 3, padding=1, groups=2), small)
        assert not gemm_pays(nn.Conv2d(1280, 1280, 3, padding="same"), small)
        assert not gemm_pays(nn.Conv2d(1280, 1280, 3, padding=1, padding_mode="reflect"), small)
    assert not gemm_pays(inner, small)  # fp32: oneDNN's kernel is as fast
    assert gemm_pays(inner, small.bfloat16())  # a bf16 model without autocast
    assert not gemm_pays(inner, torch.empty(1, 1280, 4, 4, device="meta", dtype=torch.bfloat16))


def test_the_swap_keeps_the_module_and_its_state():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 8, 1))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    inputs = torch.randn(1, 64, 2, 2)
    with torch.autocast("cpu", torch.bfloat16):
        expected = model(inputs)
        assert use_gemm_convolutions(model) == 2
        swapped = model(inputs)
    assert all(type(m) is GemmConv2d and isinstance(m, nn.Conv2d) for m in (model[0], model[2]))
    assert model.state_dict().keys() == state.keys()
    torch.testing.assert_close(swapped.float(), expected.float(), rtol=0.02, atol=0.02)  # bf16 sums


@pytest.mark.parametrize("enabled", [True, False])
def test_speed_gemm_convolutions_swaps_the_students_convolutions_in_a_bf16_run(
    tmp_path, monkeypatch, enabled
):
    calls = []
    original = gemm_conv.conv2d_as_gemm
    monkeypatch.setattr(gemm_conv, "conv2d_as_gemm", lambda *args: calls.append(1) or original(*args))
    module = make_module(speed=SpeedSettings(gemm_convolutions=enabled))
    fit(module, 1, tmp_path, precision="bf16-mixed")
    student_convs = {type(m) for m in module.student.modules() if isinstance(m, nn.Conv2d)}
    teacher_convs = {type(m) for m in module.frozen.unet.modules() if isinstance(m, nn.Conv2d)}
    assert student_convs == {GemmConv2d if enabled else nn.Conv2d}
    assert teacher_convs == {nn.Conv2d}  # the frozen teacher keeps oneDNN's kernels
    assert bool(calls) == enabled  # the toy's 2x2 and 4x4 stages at batch 2 take the product
    assert torch.isfinite(module.step_terms["loss_task"])


def test_the_default_is_on_for_a_cpu_only():
    assert SpeedSettings().resolved(torch.device("cpu"))["gemm_convolutions"] is True
    assert SpeedSettings().resolved(torch.device("cuda"))["gemm_convolutions"] is False
    with pytest.raises(
        ValueError, match=r"speed.gemm_convolutions='yes': accepted are \[True, False, 'auto'\]"
    ):
        SpeedSettings(gemm_convolutions="yes")
