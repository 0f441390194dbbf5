"""Stage-2 loss pieces: the authors' exact 1/r segment weighting and the loss settings."""

from __future__ import annotations

import pytest
import torch

from degflow.losses import LossSettings, segment_weights


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
