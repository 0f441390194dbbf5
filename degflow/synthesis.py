"""Generation of LR images at any scale from HR images: the one code path for validation,
the Python API and the ``synthesize.py`` CLI.

Encode the HR image once (latent z_0 and skip features H_HR), integrate dz/dt = v(z, t) from
t = 0 to every requested t(s) in ONE solve, decode each latent with H_HR, clamp to [-1, 1].
Images whose size is not a multiple of the model's stride are padded (replicate) and
cropped back, never resized.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from degflow.checkpoint import build_model, load_checkpoint
from degflow.solvers import SolverSpec, integrate
from degflow.timemap import TimeMap

log = logging.getLogger(__name__)


@dataclass
class SynthesisResult:
    """Output of :meth:`Synthesizer.generate`.

    ``images[s]`` is ``[B, 3, H, W]`` in [-1, 1] at HR pixel size for each requested scale s.
    """

    images: dict[float, torch.Tensor]
    times: dict[float, float]
    nfe: int
    seconds: float


class Synthesizer:
    """A trained DegFlow model ready to generate: frozen RAE + velocity field + time map.

    Use :meth:`from_checkpoint` with a stage-2 (``lfm``) checkpoint, then call the object:
    ``synth(hr_batch, scales) -> {scale: lr_batch}`` (tensors in [-1, 1], LR at HR size).
    """

    def __init__(self, rae: torch.nn.Module, velocity: torch.nn.Module, time_map: TimeMap,
                 solver: SolverSpec, device: torch.device | str = "cpu", precision: str = "fp32",
                 max_trained_scale: float | None = None):
        self.device = torch.device(device)
        self.rae = rae.to(self.device).eval().requires_grad_(False)
        self.velocity = velocity.to(self.device).eval().requires_grad_(False)
        self.time_map = time_map
        self.solver = solver
        self.precision = precision
        self.max_trained_scale = max_trained_scale if max_trained_scale is not None else time_map.scales[-1]
        levels = len(velocity.config.get("ch_mult", (1,))) - 1
        self.pad_multiple = int(rae.stride) * (2 ** levels)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu",
                        solver: SolverSpec | None = None, precision: str = "fp32") -> "Synthesizer":
        """Load a stage-2 checkpoint (self-contained: RAE weights, velocity net, knot times, solver)."""
        ckpt = load_checkpoint(path, kind="lfm", key="ckpt")
        rae = build_model(ckpt["models"]["rae"])
        velocity = build_model(ckpt["models"]["velocity"])
        time_map = TimeMap.from_dict(ckpt["time_map"])
        if solver is None:
            solver = SolverSpec.create(**ckpt["extra"]["solver"])
        return cls(rae, velocity, time_map, solver, device=device, precision=precision,
                   max_trained_scale=max(ckpt["train_scales"]))

    def scale_times(self, scales: Sequence[float], allow_extrapolation: bool = False) -> dict[float, float]:
        """Time t(s) of each scale; scales beyond the trained range need ``allow_extrapolation``."""
        out = {}
        for s in scales:
            s = float(s)
            if s < 1.0:
                raise ValueError(f"scales: every scale must be >= 1 (1 = the HR image), got {s:g}")
            if s > self.max_trained_scale + 1e-9 and not allow_extrapolation:
                raise ValueError(
                    f"scales: {s:g} lies outside the trained range [1, {self.max_trained_scale:g}]; "
                    "set allow_extrapolation=true to extrapolate the trajectory anyway"
                )
            out[s] = float(self.time_map.scale_to_time(s))
        return out

    def _velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.precision == "bf16" and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.velocity(z, t).to(z.dtype)
        return self.velocity(z, t)

    @torch.no_grad()
    def generate(self, hr: torch.Tensor, scales: Sequence[float], allow_extrapolation: bool = False,
                 solver: SolverSpec | None = None) -> SynthesisResult:
        """Generate LR images at HR size for every scale, from one ODE solve.

        Args:
            hr: ``[B, 3, H, W]`` HR images in [-1, 1] (any H, W >= 1).
            scales: requested scales s >= 1 (exact values; nothing is rounded to a grid).
        Returns:
            :class:`SynthesisResult` with ``images[s]`` of shape ``[B, 3, H, W]``.
        """
        if hr.dim() != 4 or hr.shape[1] != 3:
            raise ValueError(f"hr must be [B, 3, H, W], got shape {tuple(hr.shape)}")
        times = self.scale_times(scales, allow_extrapolation)
        start = time.perf_counter()
        hr = hr.to(self.device, torch.float32)
        h, w = hr.shape[-2:]
        ph, pw = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        padded = F.pad(hr, (0, pw, 0, ph), mode="replicate") if ph or pw else hr
        z0, feats = self.rae.encode(padded)
        unique = sorted(set(times.values()))
        states, nfe = integrate(self._velocity, z0, unique, solver or self.solver)     # [T,B,C,h,w]
        by_time = {t: states[i] for i, t in enumerate(unique)}
        images = {}
        for s, t in times.items():
            x = self.rae.decode(by_time[t], feats).clamp(-1, 1)
            images[s] = x[..., :h, :w]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return SynthesisResult(images=images, times=times, nfe=nfe, seconds=time.perf_counter() - start)

    def __call__(self, hr: torch.Tensor, scales: Sequence[float], allow_extrapolation: bool = False
                 ) -> dict[float, torch.Tensor]:
        """``synth(hr_batch, scales) -> {scale: lr_batch}`` (see :meth:`generate`)."""
        return self.generate(hr, scales, allow_extrapolation).images
