"""A faster 3D convolution on the CPU for the causal video VAE.

PyTorch 2.13's CPU build sends float32 `conv3d` to its im2col fallback (`aten::slow_conv3d_forward`), which
dominates a Wan-style VAE decode on a CPU; oneDNN's kernel computes the same convolution several times
faster (figures: training/NOTES.md, "CPU kernels"; benchmarks/cpu_vs_diffusers.py shows the effect on whole
generations). The outputs differ only by float32 summation order.
"""

from __future__ import annotations

import types

import torch


def _onednn_conv_forward(self: torch.nn.Conv3d, input: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    if input.device.type == "cpu" and input.dtype == torch.float32 and self.padding_mode == "zeros" and \
            isinstance(self.padding, tuple):
        return torch.mkldnn_convolution(input.contiguous(), weight.contiguous(), bias, self.padding, self.stride,
                                        self.dilation, self.groups)
    return torch.nn.Conv3d._conv_forward(self, input, weight, bias)


def use_onednn_conv3d(model: torch.nn.Module) -> int:
    """Route every Conv3d of `model` through oneDNN while it runs in float32 on the CPU (elsewhere the usual
    kernel runs). Returns how many layers were switched; 0 where this PyTorch has no oneDNN."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")):
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module._conv_forward = types.MethodType(_onednn_conv_forward, module)
            switched += 1
    return switched
