"""``degrade(hr, scale)`` (degflow/generation/degrade.py): the generation core called per batch.

Checkpoints are tiny random models (tests/test_synthesis.py builds them the way training writes
them); the equality tests compare with the files ``synthesize.py``'s job writes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from test_synthesis import _hr, _image, _write_lfm_checkpoint

from degflow.core.scales import scale_key
from degflow.core.solvers import SolverSpec
from degflow.data.images import read_image
from degflow.generation import Synthesizer
from degflow.generation.degrade import INDEPENDENCE_ATOL, Degrader, quantize_8bit
from degflow.infra.checkpoint import CheckpointError, save_checkpoint
from degflow.jobs.lr_dataset import write_lr_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCALES = [1.5, 2.25, 3.0]
LEVEL = 2.0 / 255.0            # one 8-bit level in [-1, 1] units
#: the default solver's kind (fixed step, cubic output) at 4 steps: what the tests need, 4x faster
SOLVER = SolverSpec.create("rk4", steps=4, output_mode="cubic")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _write_lfm_checkpoint(tmp_path_factory.mktemp("ckpt") / "lfm.pt", SolverSpec.create("rk4", steps=4))


@pytest.fixture(scope="module")
def deg(ckpt) -> Degrader:
    return Degrader.from_checkpoint(ckpt, solver=SOLVER)          # solves to t(4), the largest training scale


def _batch(n: int, h: int = 40, w: int = 48) -> torch.Tensor:
    return torch.cat([_hr(h, w, seed=i) for i in range(n)])


def test_output_equals_synthesize_py_files_bit_for_bit(ckpt, tmp_path):
    """Same HR, scale list, checkpoint and solver: degrade's 8-bit LR (true size and HR size,
    both hr_size_output modes) equals the PNG files synthesize.py's job writes, read back.
    synthesize.py solves to t(max requested scale); the Degrader to t(max_scale): equal here."""
    (tmp_path / "in").mkdir()
    for i in range(2):
        Image.fromarray(_image(40, 48, i)).save(tmp_path / "in" / f"img{i}.png")
    synth = Synthesizer.from_checkpoint(ckpt, solver=SOLVER)
    for mode in ("decoded", "from_lr"):
        out = tmp_path / f"out-{mode}"
        summary = write_lr_dataset(synth, tmp_path / "in", out, SCALES, size="both", hr_size_output=mode,
                                   progress=False)
        assert summary.failed == 0
        deg = Degrader(synth, max_scale=max(SCALES), hr_size_output=mode)
        for i in range(2):
            hr = read_image(out / "HR" / f"img{i}.png")[None]
            for s in SCALES:
                got = deg(hr, s, size="both")
                assert torch.equal(got.lr[0], read_image(out / "LR" / scale_key(s) / f"img{i}.png"))
                assert torch.equal(got.hr_size[0], read_image(out / "LR_hrsize" / scale_key(s) / f"img{i}.png"))


def test_per_sample_scales_match_synthesize_within_one_level_and_solve_once(ckpt, tmp_path):
    """A batch with a different scale per sample: ONE solve (whatever the
    number of scales: 17 for rk4/4/cubic), each sample equal to its synthesize.py file up to one 8-bit level."""
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(_image(40, 48, i)).save(tmp_path / "in" / f"img{i}.png")
    synth = Synthesizer.from_checkpoint(ckpt, solver=SOLVER)
    write_lr_dataset(synth, tmp_path / "in", tmp_path / "out", SCALES, progress=False)
    deg = Degrader(synth, max_scale=max(SCALES))
    hr = torch.stack([read_image(tmp_path / "out" / "HR" / f"img{i}.png") for i in range(3)])
    got = deg(hr, SCALES)
    assert got.nfe == 4 * 4 + 1
    assert isinstance(got.lr, list) and [tuple(x.shape) for x in got.lr] == [(3, 27, 32), (3, 18, 21), (3, 13, 16)]
    for i, s in enumerate(SCALES):
        ref = read_image(tmp_path / "out" / "LR" / scale_key(s) / f"img{i}.png")
        assert float((got.lr[i] - ref).abs().max()) <= LEVEL + 1e-6


def test_a_sample_does_not_depend_on_the_other_samples_of_its_batch(deg):
    """Per-sample results (before quantisation) within INDEPENDENCE_ATOL of the sample alone,
    whatever the other samples' contents and scales (the solve always ends at t(max_scale))."""
    raw = Degrader(deg.synth, quantize=False)
    assert raw.independent
    hr = _batch(4)
    scales = [1.25, 3.9, 2.0, 1.0]
    together = raw(hr, scales)
    for i, s in enumerate(scales):
        alone = raw(hr[i:i + 1], s).lr[0]
        assert float((together.lr[i] - alone).abs().max()) <= INDEPENDENCE_ATOL
    # another batch around sample 0: other contents, other scales
    other = raw(torch.cat([hr[:1], _hr(40, 48, seed=7).flip(-1)]), [1.25, 4.0])
    assert float((other.lr[0] - together.lr[0]).abs().max()) <= INDEPENDENCE_ATOL


def test_one_scale_per_batch_gives_one_tensor_and_equals_the_per_sample_call(deg):
    hr = _batch(3)
    batch = deg(hr, 2.5, size="both")
    assert isinstance(batch.lr, torch.Tensor) and batch.lr.shape == (3, 3, 16, 19)
    assert batch.hr_size.shape == hr.shape and batch.scales == (2.5, 2.5, 2.5)
    each = deg(hr, [2.5, 2.5, 2.5])
    assert isinstance(each.lr, list)
    assert torch.equal(torch.stack(each.lr), batch.lr)


def test_the_same_call_gives_the_same_batch_and_a_noise_hook_is_seeded(deg):
    hr = _batch(2)
    assert torch.equal(deg(hr, [1.7, 3.1]).lr[1], deg(hr, [1.7, 3.1]).lr[1])

    def noise(lr, scale, generator):               # a stand-in for issue #27's stochastic part
        return lr + 0.05 * torch.randn(lr.shape, generator=generator)

    a = deg(hr, 2.0, noise=noise, seed=3).lr
    b = deg(hr, 2.0, noise=noise, seed=3).lr
    c = deg(hr, 2.0, noise=noise, seed=4).lr
    clean = deg(hr, 2.0).lr
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, clean)
    seen = []

    def noise_with_hr(lr, scale, generator, hr=None):     # a hook that takes the HR image gets it, at LR size
        seen.append(hr)
        return lr

    deg(hr, 2.0, noise=noise_with_hr, seed=3)
    assert [tuple(h.shape) for h in seen] == [tuple(a[:1].shape)] * 2
    with pytest.raises(ValueError, match="seed= or generator="):
        deg(hr, 2.0, noise=noise)
    with pytest.raises(ValueError, match="from_lr"):
        deg(hr, 2.0, noise=noise, seed=0, size="both")


@pytest.mark.slow
def test_zero_one_range_and_bfloat16_inputs_come_back_in_kind(deg):
    hr = _batch(2)
    ref = deg(hr, 2.0, size="both")
    zo = Degrader(deg.synth, value_range=(0, 1))
    got = zo((hr + 1) / 2, 2.0, size="both")
    assert float(got.lr.min()) >= 0 and float(got.lr.max()) <= 1
    torch.testing.assert_close(got.lr * 2 - 1, ref.lr, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.hr_size * 2 - 1, ref.hr_size, rtol=0, atol=1e-6)
    half = deg(hr.bfloat16(), 2.0)
    assert half.lr.dtype == torch.bfloat16
    assert float((half.lr.float() - ref.lr).abs().max()) < 0.05


@pytest.mark.slow
def test_bf16_precision_runs_and_stays_close_to_fp32(ckpt):
    fp32 = Degrader.from_checkpoint(ckpt, solver=SOLVER)
    bf16 = Degrader.from_checkpoint(ckpt, solver=SOLVER, precision="bf16")
    hr = _batch(2)
    a, b = fp32(hr, [1.5, 3.5], size="hr").hr_size, bf16(hr, [1.5, 3.5], size="hr").hr_size
    assert b.dtype == torch.float32 and float((a - b).abs().mean()) < 0.05


def test_it_runs_under_no_grad_beside_a_training_step(deg):
    """Called inside a training step (grad enabled, the SR net in train mode): the LR is a plain
    tensor without history, the SR loss backpropagates, and the degradation's modules keep no
    gradient."""
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    hr = _batch(2)
    with torch.enable_grad():
        lr = deg(hr, 2.0).lr
        assert not lr.requires_grad
        loss = net(lr).abs().mean()
        loss.backward()
    assert net.weight.grad is not None
    assert all(p.grad is None for p in deg.synth.velocity.parameters())
    assert all(p.grad is None for p in deg.synth.rae.parameters())


def test_grid_output_and_dopri5_are_flagged_not_independent(deg):
    assert not Degrader(Synthesizer(deg.synth.rae, deg.synth.velocity, deg.synth.time_map,
                                    SolverSpec.create("rk4", steps=4))).independent
    assert not Degrader(Synthesizer(deg.synth.rae, deg.synth.velocity, deg.synth.time_map,
                                    SolverSpec.create("dopri5"))).independent


def test_bad_inputs_are_refused_with_one_clear_line(deg, ckpt, tmp_path):
    hr = _batch(2)
    cases = [
        (lambda: deg(hr[0], 2.0), r"\[B, 3, H, W\].*got shape \(3, 40, 48\); add a batch dimension"),
        (lambda: deg(hr[:, :1], 2.0), r"\[B, 3, H, W\].*got shape \(2, 1, 40, 48\)"),
        (lambda: deg(((hr + 1) * 127.5).to(torch.uint8), 2.0), "floating-point.*torch.uint8"),
        (lambda: deg((hr + 1) * 127.5, 2.0), r"values must lie in \[-1, 1\].*divide by 255"),
        (lambda: deg(hr, 0.5), "scale.*>= 1"),
        (lambda: deg(hr, [2.0, 0.9]), "scale.*>= 1"),
        (lambda: deg(hr, [2.0]), "one per sample \\(2\\), got 1"),
        (lambda: deg(hr, 4.5), "above max_scale=4"),
        (lambda: deg(hr, float("nan")), "finite number >= 1"),
        (lambda: deg(hr, 2.0, size="lr_size"), "size='lr_size' is not one of"),
        (lambda: deg(hr[..., :1, :2], 4.0), "too large for a 1x2 image"),
        (lambda: Degrader.from_checkpoint(ckpt, max_scale=6.0), "outside the trained range.*allow_extrapolation"),
        (lambda: Degrader(deg.synth, value_range=(0, 255)), r"value_range=\(0, 255\) is not one of"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    rae_only = tmp_path / "rae.pt"
    save_checkpoint(rae_only, {"kind": "rae", "step": 1})
    with pytest.raises(CheckpointError, match="rae.pt"):
        Degrader.from_checkpoint(rae_only)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Degrader.from_checkpoint(tmp_path / "missing.pt")


def test_extrapolated_max_scale_is_allowed_when_asked(ckpt):
    deg = Degrader.from_checkpoint(ckpt, solver=SOLVER, max_scale=5.0, allow_extrapolation=True)
    assert deg(_batch(1, 40, 48), 4.8).lr.shape == (1, 3, 8, 10)


def test_quantize_8bit_equals_a_png_round_trip(tmp_path):
    from degflow.data.images import write_image

    x = torch.rand(3, 9, 11) * 2.2 - 1.1
    write_image(tmp_path / "x.png", x)
    assert torch.equal(quantize_8bit(x), read_image(tmp_path / "x.png"))
