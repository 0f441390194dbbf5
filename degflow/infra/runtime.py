"""Where and how computations run: the device, the numeric precision, the seed.

One home for what training and generation both need: ``device`` / ``precision`` / ``seed``
config values turned into a torch device, an autocast context and seeded RNGs.
"""

from __future__ import annotations

import contextlib
import random
import zlib

import numpy as np
import torch

from degflow.infra.checks import check_bool, check_int

__all__ = ["PRECISIONS", "autocast", "check_precision", "resolve_device", "seed_everything", "set_tf32"]

#: Values of ``precision``: fp32, or bf16 autocast (CUDA or CPU).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def resolve_device(spec: str | torch.device) -> torch.device:
    """``device`` config value -> torch.device: ``auto`` picks CUDA when present, else CPU.

    Accepts ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch.device. Raises ValueError
    (naming ``device``) for anything else, or for CUDA on a machine without it.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if isinstance(spec, str) and spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r} was requested but CUDA is not available here; use device=auto or cpu")
        return torch.device(spec)
    raise ValueError(f"device={spec!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N']")


def check_precision(precision: str) -> str:
    """``precision`` itself if it is one of :data:`PRECISIONS`; else ValueError naming the key."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision='bf16'``, on CUDA or CPU (fast on CPUs with AMX /
    AVX512-BF16, slow elsewhere); a no-op for ``fp32``.

    A ``precision`` outside :data:`PRECISIONS` raises ValueError naming ``precision``.
    """
    kind = torch.device(device).type
    if check_precision(precision) == "bf16" and kind in ("cuda", "cpu"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices): model initialisation, data
    sampling and noise draws of a fresh run then depend on ``seed`` alone (config ``seed``)."""
    check_int(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def key_seed(*parts: object) -> int:
    """A seed named by its parts: ``crc32(":".join(str(p) for p in parts)) & 0x7FFFFFFF``. It
    depends on nothing else (no order, batch, shard, process or machine), so every job that
    draws for the same key (an image, a scale, a sample) draws the same numbers."""
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matrix products and convolutions on CUDA (config ``tf32``; Ampere and
    newer GPUs), or IEEE fp32 for both. TF32 keeps fp32's range with a 10-bit mantissa
    (relative error about 1e-3 per product, accumulated in fp32): safe for training, whose
    gradient noise is far larger. torch's own default is TF32 for cuDNN convolutions and IEEE
    for matrix products; ``enabled=True`` extends TF32 to the products (attention, linear
    layers). No effect on the CPU."""
    mode = "tf32" if check_bool(enabled, "tf32") else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    except AttributeError:  # torch before 2.9
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
