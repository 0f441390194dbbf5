"""ODE solving over torchdiffeq: solver specs, NFE counting, exact time grids.

The flow is ``dz/dt = v(z, t)`` with ``z`` of shape ``[B, ...]`` and ``t`` in ``[0, 1]``
(beyond 1 when extrapolating). :func:`integrate` runs ONE solve from ``t = 0`` and returns
the state at every requested time.

Fixed-step methods (``euler``, ``midpoint``, ``rk4``) in torchdiffeq step along the grid
they are given and, for output times that fall between two grid points, *linearly
interpolate* between the steps (losing the method's order). :func:`time_grid` therefore
merges every requested time into the uniform step grid, so every output is an actual
solver step. The adaptive method (``dopri5``) uses its own dense output.

Config keys: ``solver.method``, ``solver.steps``, ``solver.rtol``, ``solver.atol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "FIXED_STEP_STAGES",
    "SOLVER_METHODS",
    "CountingField",
    "SolverSpec",
    "integrate",
    "time_grid",
]

#: All supported methods (config key ``solver.method``).
SOLVER_METHODS: tuple[str, ...] = ("dopri5", "euler", "midpoint", "rk4")
#: Methods that step on a given grid (need ``solver.steps``).
FIXED_STEP_METHODS: tuple[str, ...] = ("euler", "midpoint", "rk4")
#: Methods with adaptive step size (need ``solver.rtol`` and ``solver.atol``).
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5",)
#: Function evaluations per step of each fixed-step method.
FIXED_STEP_STAGES: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}

_DEFAULT_TOL = 1e-5
_GRID_DEDUP_TOL = 1e-9

Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SolverSpec:
    """How to integrate the flow.

    Attributes:
        method: one of :data:`SOLVER_METHODS` (``solver.method``).
        steps: number of uniform steps over ``[0, max requested time]`` for fixed-step
            methods (``solver.steps``, >= 1); must be ``None`` for ``dopri5``.
        rtol, atol: tolerances for ``dopri5`` (``solver.rtol``, ``solver.atol``, > 0);
            must be ``None`` for fixed-step methods.

    Validated on construction; use :meth:`create` to get dopri5's default tolerances.
    """

    method: str
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def create(
        cls,
        method: str,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> "SolverSpec":
        """Build a spec, filling ``rtol = atol = 1e-5`` for dopri5 when both are None."""
        if method in ADAPTIVE_METHODS and rtol is None and atol is None:
            rtol = atol = _DEFAULT_TOL
        return cls(method=method, steps=steps, rtol=rtol, atol=atol)

    @property
    def is_fixed_step(self) -> bool:
        """True for euler / midpoint / rk4."""
        return self.method in FIXED_STEP_METHODS

    def validate(self) -> None:
        """Raise ``ValueError`` for an inconsistent spec."""
        if self.method not in SOLVER_METHODS:
            raise ValueError(
                f"solver.method: unknown ODE method {self.method!r}; valid methods are "
                f"{list(SOLVER_METHODS)} (fixed-step: {list(FIXED_STEP_METHODS)}, adaptive: "
                f"{list(ADAPTIVE_METHODS)})"
            )
        if self.is_fixed_step:
            if self.steps is None:
                raise ValueError(
                    f"solver.steps: fixed-step method {self.method!r} needs a number of steps "
                    f"(an integer >= 1), got None"
                )
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise ValueError(
                    f"solver.steps: expected an integer >= 1 for method {self.method!r}, got "
                    f"{self.steps!r}"
                )
            for key, val in (("rtol", self.rtol), ("atol", self.atol)):
                if val is not None:
                    raise ValueError(
                        f"solver.{key}: fixed-step method {self.method!r} takes no tolerance, "
                        f"got {key}={val!r}; set solver.{key} to null, or use an adaptive "
                        f"method {list(ADAPTIVE_METHODS)}"
                    )
        else:
            if self.steps is not None:
                raise ValueError(
                    f"solver.steps: adaptive method {self.method!r} chooses its own steps, got "
                    f"steps={self.steps!r}; set solver.steps to null, or use a fixed-step "
                    f"method {list(FIXED_STEP_METHODS)}"
                )
            for key, val in (("rtol", self.rtol), ("atol", self.atol)):
                if val is None:
                    raise ValueError(
                        f"solver.{key}: adaptive method {self.method!r} needs {key} (a float "
                        f"> 0, e.g. {_DEFAULT_TOL}), got None"
                    )
                if isinstance(val, bool) or not isinstance(val, (int, float)) or not (
                    math.isfinite(val) and val > 0
                ):
                    raise ValueError(
                        f"solver.{key}: expected a finite float > 0, got {val!r}"
                    )


class CountingField(torch.nn.Module):
    """Adapter from ``velocity(z [B, ...], t [B]) -> [B, ...]`` to torchdiffeq's
    ``f(t_scalar, z)``, counting function evaluations in :attr:`nfe`.

    The scalar ``t`` is cast to ``z``'s dtype and broadcast to ``[B]``.
    """

    def __init__(self, velocity: Velocity) -> None:
        super().__init__()
        self.velocity = velocity
        self.nfe = 0

    def reset(self) -> None:
        """Set :attr:`nfe` back to 0."""
        self.nfe = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.nfe += 1
        t_b = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(1).expand(z.shape[0])
        out = self.velocity(z, t_b)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"velocity must return a tensor shaped like z {tuple(z.shape)}, got {got}"
            )
        return out


def _as_times(times: Sequence[float] | Tensor, name: str) -> Tensor:
    """Requested times as a 1-D float64 CPU tensor ``[T]`` (finite, non-empty)."""
    if isinstance(times, Tensor):
        out = times.detach().to("cpu", torch.float64).reshape(-1)
    else:
        try:
            out = torch.as_tensor([float(v) for v in times], dtype=torch.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected {name} as a sequence of numbers, got {times!r}") from exc
    if out.numel() == 0:
        raise ValueError(f"expected at least one time in {name}, got none")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"expected finite {name}, got {out.tolist()}")
    return out


def time_grid(targets: Sequence[float] | Tensor, steps: int, t0: float = 0.0) -> Tensor:
    """Uniform step grid with every target on it.

    The uniform grid with ``steps`` intervals over ``[t0, max(targets)]`` is merged with
    ``t0`` and all targets, sorted and deduplicated: a uniform point within 1e-9 of a
    target is dropped in favour of the target, so every target lies EXACTLY on the grid.
    (torchdiffeq's fixed-grid methods would otherwise interpolate linearly between steps
    for times between grid points.) The number of solver steps is ``len(grid) - 1``,
    which is ``steps`` plus at most one per target that is not already a grid point.

    Args:
        targets: requested times ``[T]``, each ``>= t0``.
        steps: number of uniform intervals, >= 1 (``solver.steps``).
        t0: start time.

    Returns:
        float64 CPU tensor ``[G]``, strictly increasing, ``grid[0] == t0``; just
        ``[t0]`` when every target equals ``t0``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"solver.steps: expected an integer >= 1, got {steps!r}")
    tg = _as_times(targets, "targets")
    t0 = float(t0)
    if bool((tg < t0).any()):
        raise ValueError(
            f"expected every target time >= t0 = {t0}, got {sorted(tg.tolist())}"
        )
    anchors = torch.unique(torch.cat([tg, torch.tensor([t0], dtype=torch.float64)]))
    t_end = float(anchors[-1])
    if t_end == t0:
        return anchors
    uniform = torch.linspace(t0, t_end, steps + 1, dtype=torch.float64)
    dist = (uniform.unsqueeze(1) - anchors.unsqueeze(0)).abs().min(dim=1).values
    kept = uniform[dist > _GRID_DEDUP_TOL]
    return torch.sort(torch.cat([anchors, kept])).values


def integrate(
    velocity: Velocity,
    z0: Tensor,
    times: Sequence[float] | Tensor,
    spec: SolverSpec,
) -> tuple[Tensor, int]:
    """Integrate ``dz/dt = velocity(z, t)`` from ``t = 0`` in one solve.

    Args:
        velocity: ``(z [B, ...], t [B]) -> [B, ...]``.
        z0: state at ``t = 0``, ``[B, ...]``, floating point.
        times: requested times ``[T]``, each ``>= 0`` (may exceed 1, may be unsorted or
            repeated; time 0 gives ``z0``).
        spec: the solver (see :class:`SolverSpec`).

    Returns:
        ``(states [T, B, ...], nfe)``: the state at each requested time in the requested
        order, on ``z0``'s device and dtype, and the number of velocity evaluations.
        Fixed-step methods step on :func:`time_grid` (``nfe = (len(grid) - 1) * stages``);
        dopri5 steps adaptively with ``spec.rtol``/``spec.atol``. Runs under the caller's
        grad mode (backpropagation goes through the solver's operations).
    """
    if not isinstance(spec, SolverSpec):
        raise ValueError(f"expected a SolverSpec, got {type(spec).__name__}")
    spec.validate()
    if not isinstance(z0, Tensor) or not torch.is_floating_point(z0) or z0.ndim < 1:
        desc = (
            f"{z0.dtype} shape {tuple(z0.shape)}" if isinstance(z0, Tensor) else type(z0).__name__
        )
        raise ValueError(f"expected z0 as a floating-point tensor [B, ...], got {desc}")
    req = _as_times(times, "times")
    if bool((req < 0).any()):
        raise ValueError(
            f"expected every requested time >= 0 (the solve starts at t = 0, the HR latent), "
            f"got {req.tolist()}"
        )
    field = CountingField(velocity)
    if float(req.max()) == 0.0:
        return z0.unsqueeze(0).expand(req.numel(), *z0.shape).clone(), 0

    if spec.is_fixed_step:
        assert spec.steps is not None
        grid64 = time_grid(req, spec.steps, 0.0)
    else:
        grid64 = torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), req]))
    # Cast to the state's dtype; rounding may merge neighbours, so deduplicate again.
    grid = torch.unique_consecutive(grid64.to(z0.dtype))
    req_cast = req.to(z0.dtype)
    idx = torch.searchsorted(grid, req_cast)
    assert bool((grid[idx.clamp(max=grid.numel() - 1)] == req_cast).all()), "time not on grid"
    grid = grid.to(z0.device)

    if spec.is_fixed_step:
        sol = odeint(field, z0, grid, method=spec.method)
    else:
        sol = odeint(field, z0, grid, method=spec.method, rtol=spec.rtol, atol=spec.atol)
    return sol[idx.to(z0.device)], field.nfe
