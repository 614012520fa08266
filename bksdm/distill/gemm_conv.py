"""Convolutions with few output pixels as one matrix multiply, on a CPU in bf16 or fp16.

At batch 1 and small latents the inner U-Net stages convolve 8x8 or 4x4 maps with 1280-2560 channels:
a deep, narrow product (K = C_in * k * k = 11,520 rows against 16-64 output pixels). oneDNN's bf16
convolution kernels run those shapes at 15-80 GFLOP/s on the CPUs measured, its backward worst of
all, while the same product written as ``im2col`` (``F.unfold``) and one ``matmul`` reaches the GEMM
rate: 4-7x faster forward and backward for a 3x3 1280 -> 1280 convolution at 8x8 and 4x4 (AMD EPYC
with avx512_bf16, 2 threads; ``experiments/bench/README.md``). Where the maps are large the direct
kernel is better (2x faster at 32x32 with 320 channels), and in fp32 it is about as fast, so the swap
is made per call by the shape and the compute dtype. PyTorch has no such dispatch of its own;
``torch.compile`` could choose per shape, but compiling a full-width U-Net on a 2-core CPU takes longer
than the runs this serves.

On a GPU, and for every convolution the rule does not pick, the module runs ``nn.Conv2d``'s own
kernel: the swap changes which kernel computes the same sum, not the module, its parameters or its
state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The product is at least this many times deeper (C_in * k * k) than it is wide (output pixels of the
# call): measured 2x faster at a ratio of 45 (1280 channels, 16x16), even at 22 (640 channels, 16x16),
# 2x slower at 2.8 (320 channels, 32x32).
MIN_DEPTH_PER_PIXEL = 32
LOW_PRECISION = (torch.bfloat16, torch.float16)


def compute_dtype(inputs: torch.Tensor) -> torch.dtype:
    """The dtype a convolution of ``inputs`` computes in: autocast's, where it is on for the device."""
    device = inputs.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return inputs.dtype


def output_size(conv: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    sizes = []
    for size, kernel, stride, padding, dilation in zip(
        (height, width), conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        sizes.append((size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)
    return sizes[0], sizes[1]


def gemm_pays(conv: nn.Conv2d, inputs: torch.Tensor) -> bool:
    """Whether ``conv`` of ``inputs`` (B, C_in, H, W) runs faster as one matrix multiply (see the module
    docstring): on a CPU, in bf16 or fp16, for an ungrouped zero-padded convolution whose product is deep
    and narrow."""
    if inputs.device.type != "cpu" or inputs.dim() != 4 or compute_dtype(inputs) not in LOW_PRECISION:
        return False
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    height, width = output_size(conv, inputs.shape[2], inputs.shape[3])
    depth = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return inputs.shape[0] * height * width * MIN_DEPTH_PER_PIXEL <= depth


def conv2d_as_gemm(conv: nn.Conv2d, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``conv``'s convolution of ``inputs`` (B, C_in, H, W) -> (B, C_out, H', W') as ``im2col`` and one
    matmul, in the compute dtype; autograd differentiates both (``unfold``'s gradient is ``fold``)."""
    dtype = compute_dtype(inputs)
    batch = inputs.shape[0]
    height, width = output_size(conv, inputs.shape[2], inputs.shape[3])
    columns = F.unfold(inputs.to(dtype), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    # one 2-D product (C_out, K) @ (K, B * H' * W'): a batched matmul of a 2-D weight computes a
    # transposed product, whose strided gradient made the weight's gradient cast several times slower
    columns = columns.transpose(0, 1).reshape(columns.shape[1], -1)  # a view at batch 1
    out = weight.to(dtype).flatten(1) @ columns
    if bias is not None:
        out = out + bias.to(dtype)[:, None]
    out = out.view(conv.out_channels, batch, height, width).transpose(0, 1)
    if inputs.is_contiguous(memory_format=torch.channels_last) and not inputs.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)  # the layout the model runs in
    return out.contiguous()


class GemmConv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes as one matrix multiply where ``gemm_pays``, with its own kernel
    elsewhere. Made from an existing ``nn.Conv2d`` by ``use_gemm_convolutions``."""

    def _conv_forward(self, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if gemm_pays(self, inputs):
            return conv2d_as_gemm(self, inputs, weight, bias)
        return super()._conv_forward(inputs, weight, bias)


def use_gemm_convolutions(model: nn.Module) -> int:
    """Turns every plain ``nn.Conv2d`` of ``model`` into a ``GemmConv2d``, in place (same parameters,
    same state dict); returns how many."""
    convs = [module for module in model.modules() if type(module) is nn.Conv2d]
    for conv in convs:
        conv.__class__ = GemmConv2d
    return len(convs)
