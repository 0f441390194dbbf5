"""GPU throughput switches applied to the networks a stage runs every step.

- ``channels_last`` (config ``channels_last``): convolution weights in NHWC memory order;
  cuDNN's tensor-core kernels prefer it, and convolutions then return NHWC activations.
  Works (and computes the same function) on the CPU too.
- ``compile`` (config ``compile``): ``torch.compile`` of the module's forward, in place
  (``nn.Module.compile``), so parameter names and checkpoints do not change. The first steps
  are slow while it compiles; on the CPU it needs a C++ compiler.
- :func:`held_for_precision`: a frozen network (stage 2's RAE and LPIPS backbone) held once
  in the compute dtype. bf16 autocast casts a weight to bf16 at every call unless it is a
  leaf that requires grad (its cast cache covers only trainable weights), so frozen weights
  were cast again at every step; held in bf16 they are not cast at all, and the step
  computes the same numbers (autocast rounds fp32 weights to bf16 the same way).
- TF32 (config ``tf32``, CUDA only): :func:`degflow.infra.runtime.set_tf32`.

bf16 autocast is the training loop's ``precision`` switch; Adam is fused whenever it can be.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from degflow.infra.runtime import check_precision

#: Modules whose weights bf16 autocast runs in bf16 (convolutions and linear layers). Others
#: (norms, gains) autocast runs in fp32, so their weights stay fp32.
AUTOCAST_BF16_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                         nn.ConvTranspose3d, nn.Linear)


def accelerate(module: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> torch.nn.Module:
    """Apply the switches to ``module`` in place and return it."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module


def held_for_precision(module: nn.Module, precision: str) -> nn.Module:
    """The copy of a frozen ``module`` a training step runs under ``precision``.

    ``fp32``: ``module`` itself. ``bf16``: a frozen copy whose convolution and linear weights
    (:data:`AUTOCAST_BF16_MODULES`) are bf16, cast once here; everything else stays fp32. Run
    it under bf16 autocast only (its weights no longer match fp32 inputs outside autocast).
    The original keeps its fp32 weights (checkpoints and validation use it).
    """
    if check_precision(precision) == "fp32":
        return module
    held = copy.deepcopy(module).requires_grad_(False)
    for sub in held.modules():
        if isinstance(sub, AUTOCAST_BF16_MODULES):
            for param in sub.parameters(recurse=False):
                param.data = param.data.to(torch.bfloat16)
    return held
