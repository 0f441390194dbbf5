"""ODE solving over torchdiffeq: solver specs, NFE counting, exact time grids.

The flow is ``dz/dt = v(z, t)`` with ``z`` of shape ``[B, ...]`` and ``t`` in ``[0, 1]``
(beyond 1 when extrapolating). :func:`integrate` runs ONE solve from ``t = 0`` and returns
the state at every requested time.

Fixed-step methods (``euler``, ``midpoint``, ``rk4``) in torchdiffeq step along the grid
they are given and, for output times that fall between two grid points, *linearly
interpolate* between the steps (losing the method's order). Two ways out, chosen by
``solver.output_mode``:

``grid`` (default)
    :func:`time_grid` snaps the nearest uniform nodes onto the requested times, so every
    output is an actual solver step (exact). Requested times at least one step apart cost
    nothing extra; N requested times cost at least N steps.
``cubic``
    the solver steps on the plain uniform grid and outputs between two nodes come from
    cubic Hermite interpolation of the node states and velocities (third order, like the
    local error of rk4). The node velocities are the first stage of the next step anyway,
    so :class:`CountingField` hands them over and any number of outputs costs ONE extra
    evaluation (the velocity at the final node).

The adaptive method (``dopri5``) uses its own dense output and is *bounded*: it never
evaluates the field outside ``[0, t_max]`` (``t_max`` = the largest requested time).
torchdiffeq's own first-step heuristic probes ``f`` at ``t0 + h0`` with an unbounded ``h0``
and its last step may overshoot the final time; :func:`integrate` therefore chooses the
first step itself (:func:`bounded_first_step`, the same Hairer-Norsett-Wanner heuristic with
``h0`` capped at ``t_max``) and passes ``t_max`` as a ``step_t`` so the last step ends on it.
A velocity network trained on ``[0, 1]`` is thus never asked about ``t > 1`` by the solver;
what the field does beyond the last knot (generation at scales above the training range) is
the caller's extrapolation rule (:func:`degflow.core.spline.extrapolation_time`).

Config keys: ``solver.method``, ``solver.steps``, ``solver.output_mode``, ``solver.rtol``,
``solver.atol``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from degflow.infra.checks import check_number, check_positive_int

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_STEP_METHODS",
    "FIXED_STEP_STAGES",
    "OUTPUT_MODES",
    "SOLVER_METHODS",
    "CountingField",
    "SolverSpec",
    "bounded_first_step",
    "integrate",
    "time_grid",
    "uniform_grid",
]

#: All supported methods (config key ``solver.method``).
SOLVER_METHODS: tuple[str, ...] = ("dopri5", "euler", "midpoint", "rk4")
#: Methods that step on a given grid (need ``solver.steps``).
FIXED_STEP_METHODS: tuple[str, ...] = ("euler", "midpoint", "rk4")
#: Methods with adaptive step size (need ``solver.rtol`` and ``solver.atol``).
ADAPTIVE_METHODS: tuple[str, ...] = ("dopri5",)
#: Function evaluations per step of each fixed-step method.
FIXED_STEP_STAGES: dict[str, int] = {"euler": 1, "midpoint": 2, "rk4": 4}
#: How fixed-step methods reach requested times between nodes (``solver.output_mode``).
OUTPUT_MODES: tuple[str, ...] = ("grid", "cubic")

_DEFAULT_TOL = 1e-5
_DOPRI5_ORDER = 5
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
        output_mode: ``"grid"`` (requested times are grid nodes) or ``"cubic"`` (uniform grid,
            cubic Hermite output between nodes) for fixed-step methods (``solver.output_mode``,
            see the module docstring); ``dopri5`` ignores it (its own dense output).

    Validated on construction; use :meth:`create` to get dopri5's default tolerances.
    """

    method: str
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    output_mode: str = "grid"

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def create(
        cls,
        method: str,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        output_mode: str | None = None,
    ) -> "SolverSpec":
        """Build a spec, filling ``rtol = atol = 1e-5`` for dopri5 when both are None and
        ``output_mode = "grid"`` when None."""
        if method in ADAPTIVE_METHODS and rtol is None and atol is None:
            rtol = atol = _DEFAULT_TOL
        return cls(method=method, steps=steps, rtol=rtol, atol=atol,
                   output_mode="grid" if output_mode is None else output_mode)

    def to_dict(self) -> dict[str, object]:
        """Plain dict accepted by :meth:`create` (stored in checkpoints and manifests)."""
        return {"method": self.method, "steps": self.steps, "rtol": self.rtol,
                "atol": self.atol, "output_mode": self.output_mode}

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
        if self.output_mode not in OUTPUT_MODES:
            raise ValueError(
                f"solver.output_mode: unknown output mode {self.output_mode!r}; valid modes are "
                f"{list(OUTPUT_MODES)} (grid: requested times are solver steps; cubic: uniform "
                f"steps, cubic Hermite output in between)"
            )
        if self.is_fixed_step:
            if self.steps is None:
                raise ValueError(
                    f"solver.steps: fixed-step method {self.method!r} needs a number of steps "
                    f"(an integer >= 1), got None"
                )
            check_positive_int(self.steps, "solver.steps", hint=f" for method {self.method!r}")
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
                check_number(val, f"solver.{key}", low=0.0, open_low=True)


class CountingField(torch.nn.Module):
    """Adapter from ``velocity(z [B, ...], t [B]) -> [B, ...]`` to torchdiffeq's
    ``f(t_scalar, z)``, counting function evaluations in :attr:`nfe`.

    The scalar ``t`` is cast to ``z``'s dtype and broadcast to ``[B]``. The last evaluation
    is remembered: a call with the same time value and the very same state tensor object
    returns it without evaluating again (torchdiffeq's cubic output evaluates the velocity
    at a node, and the next step evaluates it again at the same node and state).
    """

    def __init__(self, velocity: Velocity) -> None:
        super().__init__()
        self.velocity = velocity
        self.nfe = 0
        self._last: tuple[Tensor | float, Tensor, Tensor] | None = None

    def reset(self) -> None:
        """Set :attr:`nfe` back to 0 and forget the remembered evaluation."""
        self.nfe = 0
        self._last = None

    def remember(self, t: Tensor | float, z: Tensor, out: Tensor) -> None:
        """Make ``out`` the remembered evaluation at ``(t, z)`` (it was computed by this field)."""
        self._last = (t.detach() if isinstance(t, Tensor) else t, z, out)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        # identity first: reading t's value synchronises a GPU, so only do it for a candidate
        if self._last is not None and self._last[1] is z and _time_value(self._last[0]) == _time_value(t):
            return self._last[2]
        self.nfe += 1
        t_b = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(1).expand(z.shape[0])
        out = self.velocity(z, t_b)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"velocity must return a tensor shaped like z {tuple(z.shape)}, got {got}"
            )
        self._last = (t.detach() if isinstance(t, Tensor) else t, z, out)
        return out


def _time_value(t: Tensor | float) -> float:
    return float(t.detach()) if isinstance(t, Tensor) else float(t)


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
    """Uniform step grid with every target on it, snapped rather than merged.

    Start from the uniform grid with ``steps`` intervals over ``[t0, max(targets)]`` (step
    ``h``), drop every uniform node (other than ``t0``) that lies within ``h / 2`` of a
    target (the first node also when a target lies within ``h / 2`` of ``t0``), and put
    the targets in. Every target is then EXACTLY a grid point
    (torchdiffeq's fixed-grid methods would otherwise interpolate linearly between steps).

    Cost: targets at least ``h`` apart each replace their nearest node, so the grid keeps
    ``steps`` intervals; N targets packed closer give about N intervals. In general the
    number of intervals lies between ``max(steps, #targets)`` and ``steps + #targets``, and
    no interval is longer than ``2 h`` (each dropped node has a target within ``h / 2``).

    Args:
        targets: requested times ``[T]``, each ``>= t0``.
        steps: number of uniform intervals, >= 1 (``solver.steps``).
        t0: start time.

    Returns:
        float64 CPU tensor ``[G]``, strictly increasing, ``grid[0] == t0``; just
        ``[t0]`` when every target equals ``t0``.
    """
    check_positive_int(steps, "solver.steps")
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
    uniform = torch.linspace(t0, t_end, steps + 1, dtype=torch.float64)[1:]
    h = (t_end - t0) / steps
    dist = (uniform.unsqueeze(1) - anchors.unsqueeze(0)).abs().min(dim=1).values
    drop = dist < 0.5 * h
    # a target next to t0 (whose nearest node is t0 itself, never dropped) takes node 1
    drop[0] |= bool(((anchors > t0) & (anchors < t0 + 0.5 * h)).any())
    kept = uniform[~drop]
    kept = kept[(kept.unsqueeze(1) - anchors.unsqueeze(0)).abs().min(dim=1).values > _GRID_DEDUP_TOL]
    return torch.sort(torch.cat([anchors, kept])).values


def uniform_grid(t_end: float, steps: int) -> Tensor:
    """Plain uniform grid ``[steps + 1]`` over ``[0, t_end]`` (float64, CPU; last node exactly
    ``t_end``) used by ``solver.output_mode=cubic``."""
    check_positive_int(steps, "solver.steps")
    grid = torch.linspace(0.0, float(t_end), steps + 1, dtype=torch.float64)
    grid[-1] = float(t_end)
    return grid


def _rms(x: Tensor) -> float:
    return float(x.detach().abs().pow(2).mean().sqrt())


def bounded_first_step(
    field: Callable[[Tensor, Tensor], Tensor],
    t0: Tensor,
    z0: Tensor,
    f0: Tensor,
    rtol: float,
    atol: float,
    order: int,
    t_end: float,
) -> float:
    """Initial step of an adaptive solver that never probes the field beyond ``t_end``.

    The usual heuristic (Hairer, Norsett & Wanner, Solving ODEs I, sec. II.4):
    ``d0 = ||z0 / sc||``, ``d1 = ||f0 / sc||`` with ``sc = atol + rtol |z0|`` (RMS norms),
    ``h0 = 0.01 d0 / d1`` (``1e-6`` when either is tiny), one probe ``f1 = f(t0 + h0, z0 + h0 f0)``,
    ``d2 = ||(f1 - f0) / sc|| / h0``, ``h1 = (0.01 / max(d1, d2)) ** (1 / (order + 1))``,
    first step ``min(100 h0, h1)``; here ``h0`` and the result are also capped at
    ``t_end - t0``, so the probe stays inside ``[t0, t_end]``.

    Args:
        field: torchdiffeq-style ``f(t_scalar, z)``.
        t0: scalar start time; z0, f0: ``[B, ...]`` state and ``f(t0, z0)``.
        rtol, atol: tolerances; order: the method's error order minus one (4 for dopri5).
        t_end: last time the field may be evaluated at (> t0).
    Returns:
        The first step size (a float in ``(0, t_end - t0]``).
    """
    span = float(t_end) - float(t0)
    scale = atol + z0.detach().abs() * rtol
    d0, d1 = _rms(z0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = field(t0 + h0, z0 + h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100.0 * h0, h1, span)


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
        Fixed-step methods step on :func:`time_grid` (``nfe = (len(grid) - 1) * stages``)
        or, with ``spec.output_mode == "cubic"``, on :func:`uniform_grid`
        (``nfe = steps * stages + 1``);
        dopri5 steps adaptively with ``spec.rtol``/``spec.atol`` and never evaluates the
        field outside ``[0, max(times)]`` (see the module docstring). Runs under the caller's
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

    if spec.is_fixed_step and spec.output_mode == "cubic":
        assert spec.steps is not None
        # outputs at 0 and every requested time; steps on the uniform grid in between
        out64 = torch.unique(torch.cat([torch.zeros(1, dtype=torch.float64), req]))
        out_t = torch.unique_consecutive(out64.to(z0.dtype))
        # both end at the cast of the same float64 t_end, as torchdiffeq requires
        steps_grid = torch.unique_consecutive(uniform_grid(float(out64[-1]), spec.steps).to(z0.dtype))
        req_cast = req.to(z0.dtype)
        idx = torch.searchsorted(out_t, req_cast)
        steps_grid = steps_grid.to(z0.device)
        sol = odeint(field, z0, out_t.to(z0.device), method=spec.method,
                     options={"grid_constructor": lambda f, y0, t: steps_grid, "interp": "cubic"})
        return sol[idx.to(z0.device)], field.nfe

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
        assert spec.rtol is not None and spec.atol is not None
        t0, t_end = grid[0], grid[-1]
        f0 = field(t0, z0)
        first = bounded_first_step(field, t0, z0, f0, spec.rtol, spec.atol, _DOPRI5_ORDER - 1,
                                   float(t_end))
        field.remember(t0, z0, f0)  # the solver's own first call f(t0, z0) then costs nothing
        sol = odeint(field, z0, grid, method=spec.method, rtol=spec.rtol, atol=spec.atol,
                     options={"first_step": first, "step_t": t_end.reshape(1)})
    return sol[idx.to(z0.device)], field.nfe
