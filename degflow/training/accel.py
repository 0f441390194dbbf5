"""GPU throughput switches applied to the networks a stage runs every step.

- ``channels_last`` (config ``channels_last``): convolution weights in NHWC memory order;
  cuDNN's tensor-core kernels prefer it, and convolutions then return NHWC activations.
  Works (and computes the same function) on the CPU too.
- ``compile`` (config ``compile``): ``torch.compile`` of the module's forward, in place
  (``nn.Module.compile``), so parameter names and checkpoints do not change. The first steps
  are slow while it compiles; on the CPU it needs a C++ compiler.

bf16 autocast is the training loop's ``precision`` switch; Adam is fused whenever it can be.
"""

from __future__ import annotations

import torch


def accelerate(module: torch.nn.Module, channels_last: bool = False, compile: bool = False) -> torch.nn.Module:
    """Apply the switches to ``module`` in place and return it."""
    if channels_last:
        module.to(memory_format=torch.channels_last)
    if compile:
        module.compile()
    return module
