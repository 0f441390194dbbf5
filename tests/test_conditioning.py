"""model.lfm.cond_channels: the velocity conditioned on the HR latent, v(z, t | z_0)."""

from __future__ import annotations

import pytest
import torch

from degflow.generation import Synthesizer
from degflow.models.unet import VelocityUNet
from degflow.training import train
from test_train import config, train_rae


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
