"""Tests for degflow.core.timemap: the scale <-> time convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from degflow.core.timemap import TIME_MAP_KINDS, TimeMap, build_time_map

REALSR_OPTICAL = {1: 1.0, 2: 2.1, 3: 3.0, 4: 3.75}


def test_nominal_124_maps_to_0_third_1() -> None:
    tm = TimeMap.nominal((1, 2, 4))
    assert tm.scales == (1.0, 2.0, 4.0)
    assert tm.times == pytest.approx((0.0, 1.0 / 3.0, 1.0), abs=1e-15)
    assert tm.scale_to_time(3) == pytest.approx(2.0 / 3.0)  # linear in s: (s - 1) / 3
    assert tm.knot_times((1, 2, 3, 4)) == pytest.approx((0.0, 1 / 3, 2 / 3, 1.0))
    assert all(type(v) is float for v in tm.knot_times((1, 2)))


def test_optical_realsr_ratios_put_x3_at_0727() -> None:
    tm = TimeMap.explicit((1, 2, 4), REALSR_OPTICAL)
    assert tm.scale_to_time(3.0) == pytest.approx(2.0 / 2.75)
    assert tm.scale_to_time(3.0) == pytest.approx(0.72727, abs=1e-5)
    assert tm.scale_to_time(2.0) == pytest.approx(1.1 / 2.75)
    assert tm.scale_to_time(4.0) == 1.0 and tm.scale_to_time(1.0) == 0.0
    # paired-sequence form gives the same knot times
    seq = TimeMap.explicit((1, 2, 4), (1.0, 2.1, 3.75))
    assert seq.knot_times((1, 2, 4)) == pytest.approx(tm.knot_times((1, 2, 4)))
    # the factory, config-style
    assert build_time_map("optical", [1, 2, 4], effective_scales=REALSR_OPTICAL) == tm


def test_from_times_and_factory_kinds() -> None:
    tm = TimeMap.from_times((1, 2, 4), (0.0, 0.5, 1.0))
    assert tm.scale_to_time(2.0) == 0.5 and tm.scale_to_time(3.0) == 0.75
    assert build_time_map("times", (1, 2, 4), knot_times=(0.0, 0.5, 1.0)) == tm
    assert build_time_map("nominal", (1, 2, 4)) == TimeMap.nominal((1, 2, 4))
    assert TIME_MAP_KINDS == ("nominal", "optical", "times")


@pytest.mark.parametrize(
    "tm",
    [
        TimeMap.nominal((1, 2, 4)),
        TimeMap.explicit((1, 2, 4), REALSR_OPTICAL),
        TimeMap.from_times((1, 2, 3, 4), (0.0, 0.3, 0.71, 1.0)),
    ],
)
def test_round_trip_scale_time_scale(tm: TimeMap) -> None:
    scales = np.linspace(1.0, 6.0, 51)  # includes extrapolation beyond 4
    for s in scales:
        assert tm.time_to_scale(tm.scale_to_time(float(s))) == pytest.approx(s, abs=1e-12)
    times = np.linspace(0.0, 1.5, 31)
    for t in times:
        assert tm.scale_to_time(tm.time_to_scale(float(t))) == pytest.approx(t, abs=1e-12)
    st = torch.tensor(scales, dtype=torch.float64)
    torch.testing.assert_close(tm.time_to_scale(tm.scale_to_time(st)), st)


def test_extrapolation_beyond_last_anchor_is_linear() -> None:
    tm = TimeMap.nominal((1, 2, 4))
    assert tm.scale_to_time(7.0) == pytest.approx(2.0)
    assert tm.time_to_scale(2.0) == pytest.approx(7.0)
    opt = TimeMap.explicit((1, 2, 4), REALSR_OPTICAL)
    slope = (1.0 - opt.scale_to_time(3.0)) / 1.0  # last segment, 3 -> 4
    assert opt.scale_to_time(5.0) == pytest.approx(1.0 + slope)
    assert opt.scale_to_time(4.5) > 1.0


def test_input_kinds_preserved() -> None:
    tm = TimeMap.explicit((1, 2, 4), REALSR_OPTICAL)
    assert type(tm.scale_to_time(3)) is float
    s32 = torch.tensor([[1.0, 3.0], [4.0, 5.0]])
    out = tm.scale_to_time(s32)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 2)
    assert out[0, 1].item() == pytest.approx(2.0 / 2.75, rel=1e-6)
    out_int = tm.scale_to_time(torch.tensor([1, 4]))
    assert torch.is_floating_point(out_int) and out_int.tolist() == pytest.approx([0.0, 1.0])
    lst = tm.time_to_scale([0.0, 1.0])
    assert lst == pytest.approx([1.0, 4.0]) and isinstance(lst, list)
    arr = tm.scale_to_time(np.array([1.0, 2.0]))
    assert isinstance(arr, np.ndarray) and arr.tolist() == pytest.approx([0.0, 0.4])
    # differentiable for tensors
    s = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    tm.scale_to_time(s).sum().backward()
    assert s.grad is not None and s.grad.item() == pytest.approx((2.0 / 2.75 - 0.4) / 1.0)


def test_to_dict_from_dict_round_trip_plain_floats() -> None:
    tm = TimeMap.explicit((1, 2, 4), REALSR_OPTICAL)
    d = tm.to_dict()
    assert set(d) == {"scales", "times"}
    assert all(type(v) is float for v in d["scales"] + d["times"])
    assert TimeMap.from_dict(d) == tm
    with pytest.raises(ValueError, match="scales"):
        TimeMap.from_dict({"scales": [1.0, 2.0]})


def test_timemap_is_frozen() -> None:
    tm = TimeMap.nominal((1, 4))
    with pytest.raises(AttributeError):
        tm.scales = (1.0, 2.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(kind="linear", knot_scales=(1, 2, 4)), r"spline\.knots.*'nominal', 'optical', 'times'"),
        (dict(kind="nominal", knot_scales=(1, 4, 2)), "strictly increasing"),
        (dict(kind="nominal", knot_scales=(1, 2, 2)), "strictly increasing"),
        (dict(kind="nominal", knot_scales=(1,)), "at least two"),
        (dict(kind="nominal", knot_scales=(2, 4)), "1.0"),
        (dict(kind="times", knot_scales=(1, 2, 4), knot_times=(0.0, 1.0)), "one knot time per knot"),
        (dict(kind="times", knot_scales=(1, 2, 4), knot_times=(0.0, 0.6, 0.5)), "strictly increasing"),
        (dict(kind="times", knot_scales=(1, 2, 4), knot_times=(0.1, 0.5, 1.0)), "time 0.0"),
        (dict(kind="times", knot_scales=(1, 2, 4)), "needs knot times"),
        (dict(kind="optical", knot_scales=(1, 2, 4)), "needs effective scales"),
        (dict(kind="optical", knot_scales=(1, 2, 4), effective_scales=(1.0, 2.1)), "one effective scale per knot"),
        (dict(kind="optical", knot_scales=(1, 2, 4), effective_scales=(1.0, 3.0, 2.5)), "effective scales strictly increasing"),
        (dict(kind="optical", knot_scales=(1, 2, 4), effective_scales={1: 1.0, 2: 2.1}), "missing"),
        (dict(kind="optical", knot_scales=(1, 2, 4), effective_scales=(1.2, 2.1, 3.75)), "effective scale 1.0"),
        (dict(kind="nominal", knot_scales=(1, 2, 4), knot_times=(0.0, 0.5, 1.0)), "only used by kind 'times'"),
        (dict(kind="nominal", knot_scales=(1, 2, 4), effective_scales=REALSR_OPTICAL), "only used by kind 'optical'"),
        (dict(kind="nominal", knot_scales=(1, float("nan"))), "finite"),
    ],
)
def test_build_time_map_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_time_map(**kwargs)


def test_out_of_domain_inputs_raise() -> None:
    tm = TimeMap.nominal((1, 2, 4))
    with pytest.raises(ValueError, match=r">= 1.0"):
        tm.scale_to_time(0.5)
    with pytest.raises(ValueError, match=r">= 0.0"):
        tm.time_to_scale(-0.1)
    with pytest.raises(ValueError, match=r">= 1.0"):
        tm.scale_to_time(torch.tensor([2.0, 0.9]))
    with pytest.raises(ValueError, match="number, tensor"):
        tm.scale_to_time("3")  # type: ignore[arg-type]
    assert math.isclose(tm.time_to_scale(0.0), 1.0)
