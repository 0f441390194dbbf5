"""EMA of the velocity weights (stage.ema_decay): update math, checkpoint, validation and synthesis use it."""

from __future__ import annotations

import copy

import pytest
import torch

from degflow.infra.checkpoint import load_checkpoint
from degflow.generation import Synthesizer
from degflow.training import train
from degflow.training.ema import check_ema_decay, ema_decay_at, ema_update_
from test_train import config, train_rae


def test_ema_update_is_the_convex_combination_of_average_and_live_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = copy.deepcopy(model)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema_update_(ema, model, 0.75)
    for name, p in model.state_dict().items():
        assert torch.allclose(ema.state_dict()[name], 0.75 * before[name] + 0.25 * p, atol=1e-7)


def test_ema_decay_warms_up_as_one_plus_n_over_ten_plus_n_and_stops_at_the_configured_decay():
    assert ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert ema_decay_at(500, 0.999) == pytest.approx(501 / 510)     # horizon ~55 steps in a 500-step run
    assert ema_decay_at(100_000, 0.999) == 0.999
    with pytest.raises(ValueError, match="updates must be >= 1"):
        ema_decay_at(0, 0.999)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1, True, "0.9"])
def test_a_bad_ema_decay_names_the_key_and_the_valid_range(bad):
    with pytest.raises(ValueError, match=r"stage.ema_decay must be a number in \(0, 1\) such as 0.999 \(null: no EMA\)"):
        check_ema_decay(bad)


@pytest.mark.slow
def test_an_ema_run_saves_the_average_and_validation_and_synthesis_use_it(tmp_path, monkeypatch):
    train_rae(tmp_path / "rae" / "tiny", steps=2)
    run = tmp_path / "lfm" / "tiny"
    seen = []
    original = Synthesizer.__init__

    def spy(self, rae, velocity, *args, **kwargs):  # which weights validation generates with
        seen.append({k: v.detach().clone() for k, v in velocity.state_dict().items()})
        original(self, rae, velocity, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "__init__", spy)
    train(config(["stage=lfm", f"output_root={tmp_path}", "stage.steps=3", "stage.val_every=3",
                  "stage.ema_decay=0.9", "eval.lpips=false", "loss.lpips_weight=0"]), run)
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", kind="lfm")
    live, ema = ckpt["models"]["velocity"]["state_dict"], ckpt["models"]["velocity_ema"]["state_dict"]
    assert ckpt["models"]["velocity_ema"]["config"] == ckpt["models"]["velocity"]["config"]
    assert any(not torch.equal(live[k], ema[k]) for k in live)       # the average lags the live weights
    assert seen and all(torch.equal(seen[-1][k], ema[k]) for k in ema)   # validation generated with the EMA
    synth = Synthesizer.from_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.equal(synth.velocity.state_dict()[k], ema[k]) for k in ema)


def test_a_run_without_ema_keeps_one_velocity_network():
    assert config(["stage=lfm"])["stage"]["ema_decay"] is None

