"""model.lfm.cond_channels: the velocity conditioned on the HR latent v(z, t | z_0), or on the HR latent and
the HR pixels v(z, t | z_0, HR) (degflow.generation.condition)."""

from __future__ import annotations

import pytest
import torch

import torch.nn.functional as F

from degflow.generation import Synthesizer, condition_kind, velocity_condition
from degflow.models.unet import VelocityUNet
from degflow.training import train
from test_train import config, train_rae


@pytest.mark.slow
def test_a_velocity_conditioned_on_the_hr_latent_trains_saves_and_synthesizes(tmp_path):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "tiny"
    train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2",
                  "model.lfm.cond_channels=4", "eval.lpips=false", "loss.lpips_weight=0"]), run)
    synth = Synthesizer.from_checkpoint(run / "checkpoints" / "last.pt")
    assert synth.velocity.cond_channels == 4
    hr = torch.rand(2, 3, 32, 32) * 2 - 1
    z0 = synth.rae.encode(hr)[0]
    t = torch.full((2,), 0.5)
    # the field of a solve is conditioned on ITS start: another image's z_0 gives another velocity
    assert torch.equal(synth.field(z0)(z0, t), synth.velocity(z0, t, z0))
    assert synth.generate(hr, [2.0, 4.0]).images[4.0].shape == hr.shape
    with pytest.raises(ValueError, match="cond_channels=4 expects cond"):
        synth.velocity(z0, t)


def test_an_unconditional_velocity_refuses_a_condition_and_a_bad_cond_channels_names_the_key():
    net = VelocityUNet(in_channels=4, nf=8, ch_mult=[1], num_res_blocks=1)
    z = torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match="cond_channels=0 takes no cond"):
        net(z, 0.5, z)
    with pytest.raises(ValueError, match="model.lfm.cond_channels"):
        VelocityUNet(in_channels=4, nf=8, ch_mult=[1], cond_channels=-1)


def test_the_condition_follows_cond_channels_and_a_wrong_value_lists_the_valid_ones():
    assert [condition_kind(c, 4, 8) for c in (0, 4, 196)] == ["none", "latent", "latent+pixels"]
    with pytest.raises(ValueError, match=r"model.lfm.cond_channels=5 is not one of 0 .*4 .*196"):
        condition_kind(5, 4, 8)
    z0 = torch.randn(2, 4, 3, 5)
    hr = torch.rand(2, 3, 24, 40) * 2 - 1
    assert velocity_condition("none", z0, hr, 8) is None and velocity_condition("latent", z0, None, 8) is z0
    cond = velocity_condition("latent+pixels", z0, hr, 8)
    assert cond.shape == (2, 4 + 192, 3, 5) and torch.equal(cond[:, :4], z0)
    # latent pixel (i, j) sees exactly the 8 x 8 RGB block it encodes
    assert torch.equal(cond[0, 4:, 1, 2].view(3, 8, 8), hr[0, :, 8:16, 16:24])
    with pytest.raises(ValueError, match="needs the HR image"):
        velocity_condition("latent+pixels", z0, None, 8)
    with pytest.raises(ValueError, match="does not match the latent"):
        velocity_condition("latent+pixels", z0, hr[..., :32], 8)


@pytest.mark.slow
def test_a_velocity_conditioned_on_the_hr_pixels_trains_with_and_without_the_latent_cache_and_synthesizes(tmp_path):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    for cache in ("true", "false"):
        run = tmp_path / "lfm" / f"pixels-{cache}"
        train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=2", "stage.val_every=2",
                      f"stage.latent_cache={cache}", "model.lfm.cond_channels=196", "eval.lpips=false",
                      "loss.lpips_weight=0"]), run)
        synth = Synthesizer.from_checkpoint(run / "checkpoints" / "last.pt")
        assert synth.condition == "latent+pixels"
    hr = torch.rand(1, 3, 32, 48) * 2 - 1
    z0 = synth.rae.encode(hr)[0]
    t = torch.full((1,), 0.5)
    expected = synth.velocity(z0, t, torch.cat([z0, F.pixel_unshuffle(hr, 8)], 1))
    assert torch.equal(synth.field(z0, hr)(z0, t), expected)
    other = hr.flip(-1)   # same latent, other pixels: another velocity
    assert not torch.equal(synth.field(z0, other)(z0, t), expected)
    # whole image and tiled encode/decode (the solve is always on the whole latent)
    assert synth.generate(hr, [2.0, 4.0]).images[4.0].shape == hr.shape
    synth.tile_size, synth.tile_overlap = 32, 16
    tiled = synth.generate(torch.rand(1, 3, 50, 70) * 2 - 1, [3.0])
    assert tiled.tiles > 1 and tiled.images[3.0].shape == (1, 3, 50, 70)
