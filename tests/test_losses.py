"""Stage-2 loss pieces: the authors' exact 1/r segment weighting, the training-time sampler and the loss settings."""

from __future__ import annotations

import math

import pytest
import torch

from degflow.core.losses import LossSettings, knot_warp, sample_times, segment_weights


def test_inverse_distance_is_the_authors_relative_weighting():
    """1 / (dt / segment_length + 1e-3), written out per sample."""
    dt = torch.tensor([0.0, 0.01, 1 / 6, 1 / 3, 0.6])
    seg = torch.tensor([1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    expected = [1 / (d / s + 1e-3) for d, s in zip(dt.tolist(), seg.tolist())]
    got = segment_weights(dt, seg, "inverse_distance")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got[0].item() == pytest.approx(1000.0)           # next to the knot: 1 / 1e-3
    # same fraction of the segment, same weight, whatever the segment's length
    assert got[2].item() == pytest.approx(got[3].item(), rel=1e-6)


def test_segment_weights_are_constants_of_the_loss():
    dt = torch.tensor([0.1, 0.2], requires_grad=True)
    seg = torch.tensor([0.5, 0.5], requires_grad=True)
    assert not segment_weights(dt, seg, "inverse_distance").requires_grad
    assert segment_weights(dt, seg, "none").tolist() == [1.0, 1.0]


def test_loss_settings_default_to_the_authors_average_pooling_lpips():
    assert LossSettings().lpips_pooling == "avg" and LossSettings().lpips_net == "vgg"
    with pytest.raises(ValueError, match=r"loss\.lpips_pooling='mean'.*\['avg', 'max'\]"):
        LossSettings(lpips_pooling="mean")
    with pytest.raises(ValueError, match=r"lpips_net='vgg' only"):
        LossSettings(lpips_net="alex")
    assert LossSettings(lpips_net="alex", lpips_pooling="max").lpips_net == "alex"


# ------------------------------------------------------------------ training times


def test_uniform_time_sampling_is_the_papers_linear_map_of_the_draw():
    u = torch.tensor([0.0, 0.25, 0.5, 0.999])
    knots = torch.tensor([0.0, 1 / 3, 1.0])
    assert torch.equal(sample_times(u, knots, "uniform"), knots[0] + u * (knots[-1] - knots[0]))


def test_knot_time_sampling_keeps_each_segments_share_and_puts_mass_at_its_knots():
    knots = torch.tensor([0.0, 1 / 3, 1.0])
    u = (torch.arange(1_000_000, dtype=torch.float64) + 0.5) / 1_000_000              # quasi-uniform draws
    t = sample_times(u, knots.double(), "knots", 0.5)
    assert bool((torch.diff(t) >= 0).all())                                       # monotone in u: one draw per row
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert float((t < 1 / 3).double().mean()) == pytest.approx(1 / 3, abs=1e-4)    # segment share = its length
    # density near a knot vs mid-segment: 1/(1-a) vs 1/(1-a+a*pi/2), relative to uniform
    h = 0.001
    near_end = float(((t > 1 - h) & (t <= 1)).double().mean()) / h
    mid = float(((t > 2 / 3 - h / 2) & (t < 2 / 3 + h / 2)).double().mean()) / h
    assert near_end == pytest.approx(2.0, rel=0.02)
    assert mid == pytest.approx(1 / (0.5 + 0.5 * math.pi / 2), rel=0.02)


def test_knot_warp_maps_the_unit_interval_onto_itself_and_zero_concentration_is_uniform():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert knot_warp(x, 0.0).tolist() == pytest.approx(x.tolist())
    w = knot_warp(x, 0.9)
    assert float(w[0]) == 0.0 and float(w[-1]) == pytest.approx(1.0) and bool((torch.diff(w) > 0).all())


@pytest.mark.parametrize("kwargs, says", [({"time_sampling": "logit"}, "loss.time_sampling"),
                                          ({"knot_concentration": 1.0}, "loss.knot_concentration")])
def test_bad_time_sampling_settings_name_their_key(kwargs, says):
    with pytest.raises(ValueError, match=says):
        LossSettings(**kwargs)
