"""Checkpoint format: atomic writes, weights_only loads, kind/version checks, RNG round trip."""

import random

import numpy as np
import pytest
import torch

from degflow.infra.checkpoint import CheckpointError, capture_rng_state, find_latest_checkpoint, load_checkpoint, restore_rng_state, save_checkpoint
from degflow.models.registry import build_model, model_entry
from degflow.models.rae import RAE


def small_rae() -> RAE:
    return RAE(widths=(8, 8, 16, 16))


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    rae = small_rae()
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"kind": "rae", "step": 7, "models": {"rae": model_entry(rae)}, "train_scales": [1.0, 2.0]})
    ckpt = load_checkpoint(path, kind="rae")
    assert ckpt["step"] == 7 and ckpt["format_version"] == 1
    rebuilt = build_model(ckpt["models"]["rae"])
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(rae(x, x), rebuilt(x, x))


def test_checkpoints_load_with_weights_only(tmp_path):
    """A file holding a pickled object (not plain tensors/containers) is refused, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "degflow", "payload": RAE(widths=(8, 8, 16, 16))}, path)  # a pickled class
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path)


def test_wrong_kind_and_version_and_corrupt_files_are_named(tmp_path):
    path = tmp_path / "rae.pt"
    save_checkpoint(path, {"kind": "rae", "step": 0})
    with pytest.raises(CheckpointError, match="stage-'rae' checkpoint, expected a stage-'lfm'"):
        load_checkpoint(path, kind="lfm", key="ckpt")
    old = tmp_path / "old.pt"
    torch.save({"format": "degflow", "format_version": 0, "kind": "rae"}, old)
    with pytest.raises(CheckpointError, match="format version 0"):
        load_checkpoint(old)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(corrupt, key="rae_ckpt")
    with pytest.raises(CheckpointError, match="rae_ckpt='.*missing.pt': no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt", key="rae_ckpt")


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"kind": "rae", "step": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"kind": "rae", "step": 2, "bad": Boom()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_rng_state_round_trip_reproduces_random_draws(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"kind": "rae", "rng": state})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_latest_finished_checkpoint_of_a_kind_is_found_by_time(tmp_path):
    import os

    a = tmp_path / "rae" / "a" / "checkpoints" / "last.pt"
    b = tmp_path / "rae" / "b" / "checkpoints" / "last.pt"
    c = tmp_path / "lfm" / "c" / "checkpoints" / "last.pt"
    for p, kind in ((a, "rae"), (b, "rae"), (c, "lfm")):
        save_checkpoint(p, {"kind": kind, "step": 2, "config": {"stage": {"steps": 2}}})  # finished runs
    os.utime(a, (1e9, 1e9))
    os.utime(b, (2e9, 2e9))
    os.utime(c, (3e9, 3e9))
    assert find_latest_checkpoint(tmp_path, "rae") == b
    assert find_latest_checkpoint(tmp_path, "lfm") == c
    assert find_latest_checkpoint(tmp_path / "nowhere", "rae") is None
