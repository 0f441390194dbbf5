"""The noise model of degflow/baselines/noise.py: it recovers known signal-dependent, spatially and
colour-correlated noise, samples reproducibly from a seed, scales with the strength, interpolates
across scales and round-trips through its file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from degflow.baselines.noise import NoiseModel, fit, load_noise_model, noise_seed
from degflow.infra.checkpoint import CheckpointError, save_checkpoint


def _smooth_image(seed: int, size: int = 192) -> torch.Tensor:
    """A smooth RGB image in [-0.9, 0.9] covering the intensity range: [1, 3, size, size]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64)
    return (F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False) * 1.8 - 0.9)


def _white(seed: int, shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _box3(x: torch.Tensor) -> torch.Tensor:
    """Each channel convolved with a 3x3 box of weights 1/3 (unit energy), circular borders."""
    p = F.pad(x, (1, 1, 1, 1), mode="circular")
    return F.conv2d(p, torch.full((3, 1, 3, 3), 1 / 3, dtype=x.dtype), groups=3)


def _autocorr(x: np.ndarray, dy: int, dx: int) -> float:
    """Sample autocorrelation of the 2-D field x at lag (dy, dx) (numpy, independent of the module)."""
    x = x - x.mean()
    a = x[: x.shape[0] - dy, : x.shape[1] - dx]
    b = x[dy:, dx:]
    return float((a * b).mean() / (x * x).mean())


@pytest.mark.parametrize("target", ["excess", "residual"])
def test_fit_recovers_a_signal_dependent_variance(target):
    a, b = 4e-3, 1e-4                                        # var = a * x01 + b (images in [-1, 1])
    pairs = []
    for i in range(4):
        pred = _smooth_image(i)
        std = (a * (pred + 1) / 2 + b).sqrt()
        pairs.append((pred, pred + std * _white(100 + i, pred.shape), 4.0, pred))   # the prediction is the HR
    model = fit(pairs, intensity_bins=8, gradient_bins=2, prior=0, target=target)
    # the variance each bin should hold: the mean of a x + b over the pixels of the bin (nearest centre)
    x01 = torch.cat([((p + 1) / 2) for p, *_ in pairs]).transpose(0, 1).reshape(3, -1)
    bins = (x01 * 8 - 0.5).clamp(0, 7).round().long()
    for c in range(3):
        for i in range(8):
            inside = x01[c][bins[c] == i]
            if inside.numel() < 2000:                            # too few pixels for a 5 % estimate
                continue
            expected = float((a * inside + b).mean())
            got = model.variance[0, c, i]                        # [gradient bins]: noise ignores gradients
            assert float((got / expected - 1).abs().max()) < 0.08, (c, i, got, expected)


@pytest.mark.parametrize("target", ["excess", "residual"])
def test_fit_recovers_spatial_and_colour_correlation(target):
    sigma = 0.05
    pairs = []
    for i in range(3):
        pred = _smooth_image(i)
        luma = _white(200 + i, (1, 1, 192, 192)).expand(1, 3, 192, 192)
        chroma = _white(300 + i, (1, 3, 192, 192))
        field = _box3(0.8 * luma + 0.6 * chroma)             # channel correlation 0.64, box-correlated in space
        pairs.append((pred, pred + sigma * field, 2.0, pred))
    model = fit(pairs, gradient_bins=1, radius=7, target=target)
    flat = torch.zeros(1, 3, 224, 224, dtype=torch.float64)
    noise = model.sample(flat, 2.0, torch.Generator().manual_seed(5)) - flat
    n = noise[0].numpy()
    assert abs(n.std() / sigma - 1) < 0.06
    corr = np.corrcoef(n.reshape(3, -1))
    assert np.allclose(corr[np.triu_indices(3, 1)], 0.64, atol=0.05)
    for (dy, dx), rho in {(0, 1): 2 / 3, (1, 0): 2 / 3, (1, 1): 4 / 9, (0, 2): 1 / 3, (0, 3): 0.0}.items():
        measured = np.mean([_autocorr(n[c], dy, dx) for c in range(3)])
        assert abs(measured - rho) < 0.06, ((dy, dx), measured, rho)


def test_white_noise_fits_white():
    pairs = [(p, p + 0.03 * _white(400 + i, p.shape), 3.0, p) for i, p in enumerate(_smooth_image(i, 128) for i in range(2))]
    model = fit(pairs, gradient_bins=1)
    n = (model.sample(torch.zeros(1, 3, 192, 192), 3.0, torch.Generator().manual_seed(1)))[0].double().numpy()
    assert abs(np.mean([_autocorr(n[c], 0, 1) for c in range(3)])) < 0.04
    assert abs(np.corrcoef(n.reshape(3, -1))[0, 1]) < 0.04


@pytest.fixture(scope="module")
def model() -> NoiseModel:
    pairs = [(p, p + 0.04 * _white(500 + i, p.shape), s, p)
             for i, (p, s) in enumerate((_smooth_image(i, 96), s) for i in range(2) for s in (2.0, 4.0))]
    return fit(pairs, meta={"fitted_on": "test"})


def test_same_seed_same_sample_and_strength_scales_the_noise(model):
    x = _smooth_image(9, 64).float() * 0.5                   # far from the clamp
    one = model.sample(x, 3.0, torch.Generator().manual_seed(7))
    assert torch.equal(one, model.sample(x, 3.0, torch.Generator().manual_seed(7)))
    assert not torch.equal(one, model.sample(x, 3.0, torch.Generator().manual_seed(8)))
    assert torch.equal(model.sample(x, 3.0, torch.Generator().manual_seed(7), strength=0), x)
    two = model.sample(x, 3.0, torch.Generator().manual_seed(7), strength=2.0)
    assert torch.allclose(two - x, 2 * (one - x), atol=1e-5)
    assert one.dtype == x.dtype and one.shape == x.shape


def test_per_image_generators_make_each_image_independent_of_its_batch(model):
    x = torch.cat([_smooth_image(1, 48), _smooth_image(2, 48)]).float()
    seeds = [11, 12]
    batch = model.sample(x, 2.5, [torch.Generator().manual_seed(s) for s in seeds])
    for b, s in enumerate(seeds):
        assert torch.equal(batch[b], model.sample(x[b], 2.5, torch.Generator().manual_seed(s)))


def test_scale_interpolation_between_knots(model):
    x = torch.zeros(1, 3, 8, 8)
    v2, v4 = model.variance_map(x, 2.0), model.variance_map(x, 4.0)
    assert torch.equal(model.variance_map(x, 1.0), torch.zeros_like(v2))
    assert torch.allclose(model.variance_map(x, 1.5), v2 / 2)
    assert torch.allclose(model.variance_map(x, 3.0), (v2 + v4) / 2)
    assert torch.equal(model.variance_map(x, 6.0), v4)
    assert torch.equal(model.sample(x, 1.0, torch.Generator().manual_seed(0)), x)


def test_save_and_load_round_trip(model, tmp_path):
    path = tmp_path / "noise.pt"
    model.save(path)
    back = load_noise_model(path)
    assert back.scales == model.scales and back.meta["fitted_on"] == "test"
    for name in ("variance", "gradient_edges", "covariance", "spectra"):
        assert torch.equal(getattr(back, name), getattr(model, name))
    x = _smooth_image(3, 32).float()
    g = lambda: torch.Generator().manual_seed(3)
    assert torch.equal(back.sample(x, 2.2, g()), model.sample(x, 2.2, g()))


def test_load_refuses_other_files(model, tmp_path):
    other = tmp_path / "rae.pt"
    save_checkpoint(other, {"kind": "rae", "models": {}})
    with pytest.raises(CheckpointError, match="noise=.*not a noise model"):
        load_noise_model(other)
    broken = tmp_path / "broken.pt"
    save_checkpoint(broken, {"kind": "noise", "noise_model": {**model.to_dict(), "covariance": torch.zeros(2, 2)}})
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_noise_model(broken)
    with pytest.raises(CheckpointError, match="no such"):
        load_noise_model(tmp_path / "missing.pt")


def test_fit_and_sample_refuse_bad_input(model):
    p = _smooth_image(0, 64)
    with pytest.raises(ValueError, match="scale 1 is the HR image"):
        fit([(p, p, 1.0, p)])
    with pytest.raises(ValueError, match="differ in shape"):
        fit([(p, p[..., :32], 2.0, p)])
    with pytest.raises(ValueError, match="target='excess' needs the HR image"):
        fit([(p, p, 2.0)], target="excess")
    with pytest.raises(ValueError, match="target='white' is not one of"):
        fit([(p, p, 2.0, p)], target="white")
    with pytest.raises(ValueError, match="no .* pair"):
        fit([])
    with pytest.raises(ValueError, match="patch=32"):
        fit([(p[..., :16, :16], p[..., :16, :16], 2.0, p[..., :16, :16])])
    with pytest.raises(ValueError, match="strength"):
        model.sample(p, 2.0, torch.Generator(), strength=-1)
    with pytest.raises(ValueError, match="strength"):
        model.sample(p, 2.0, torch.Generator(), strength=math.nan)
    with pytest.raises(ValueError, match=r"\[B, 3, h, w\]"):
        model.sample(p[:, :1], 2.0, torch.Generator())
    with pytest.raises(ValueError, match="one generator per image"):
        model.sample(torch.cat([p, p]), 2.0, [torch.Generator()])


def test_noise_seed_depends_only_on_its_key():
    seeds = {noise_seed(0, name, s, k) for name in ("a", "b") for s in (2.0, 2.5) for k in (0, 1)}
    assert len(seeds) == 8
    assert noise_seed(3, "sub/img", 2.5, 1) == noise_seed(3, "sub/img", 2.50, 1)
    assert noise_seed(3, "sub/img", 2.5, 1) != noise_seed(4, "sub/img", 2.5, 1)


def test_excess_noise_brings_the_predicted_residual_to_the_real_one_where_the_residual_fit_overshoots():
    """A prediction with an error of its own (e, sigma 0.03) that the real LR (noise n, sigma 0.05) does
    not share: real - predicted = n - e has variance 0.05^2 + 0.03^2, but the noise the prediction lacks
    is 0.05^2 - 0.03^2. Only the excess fit makes the sample's residual to HR as strong as the real one's."""
    pairs, hrs = [], []
    for i in range(2):
        hr = _smooth_image(i, 128)
        pred = hr + 0.03 * _white(600 + i, hr.shape)
        pairs.append((pred, hr + 0.05 * _white(700 + i, hr.shape), 2.0, hr))
        hrs.append(hr)
    real_power = 0.05 ** 2
    for target, expected in (("excess", 0.05 ** 2 - 0.03 ** 2), ("residual", 0.05 ** 2 + 0.03 ** 2)):
        model = fit(pairs, target=target, gradient_bins=1, prior=0)
        assert float(model.variance.mean()) == pytest.approx(expected, rel=0.06)
        pred, _, _, hr = pairs[0]
        sample = model.sample(pred, 2.0, torch.Generator().manual_seed(1))
        power = float((sample - hr).pow(2).mean())
        if target == "excess":
            assert power == pytest.approx(real_power, rel=0.06)
        else:
            assert power > 1.3 * real_power


def test_a_damaged_noise_file_is_refused_and_the_digest_is_returned(model, tmp_path):
    path = tmp_path / "noise.pt"
    digest = model.save(path)
    assert load_noise_model(path, with_digest=True)[1] == digest
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF                                  # one flipped byte inside the tensors
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="noise="):
        load_noise_model(path)


# ------------------------------------------------------------------------------ conditional models
def _conditional_pairs(n: int, seed: int, size: int = 96, texture_error: float = 0.0):
    """Pairs whose residual has a known conditional mean (a 3x3 filter of the HR image minus the
    prediction, plus an offset), signal-dependent noise (variance a x + b of the intensity x in [0, 1])
    and, with ``texture_error``, an extra error of that std where the HR image is textured (its right
    half: what misregistration does, not noise)."""
    a, b = 4e-3, 1e-4
    pairs, truth = [], []
    kernel = torch.tensor([[0.05, 0.1, 0.05], [0.1, 0.2, 0.1], [0.05, 0.1, 0.05]], dtype=torch.float64)
    for i in range(n):
        hr = _smooth_image(seed + i, size)
        g = torch.Generator().manual_seed(seed + 50 + i)
        textured = (torch.arange(size, dtype=torch.float64) >= size // 2).expand(size, size)
        bumps = torch.rand(1, 1, size, size, generator=g, dtype=torch.float64) - 0.5
        hr = (hr + 0.4 * bumps * textured).clamp(-0.95, 0.95)
        pred = (hr + 0.05 * _smooth_image(seed + 100 + i, size)).clamp(-0.95, 0.95)
        d = F.pad(hr - pred, (1, 1, 1, 1), mode="replicate")
        mean = F.conv2d(d, kernel.view(1, 1, 3, 3).expand(3, 1, 3, 3), groups=3) + 0.02
        var = a * ((pred + mean).clamp(-1, 1) + 1) / 2 + b
        real = pred + mean + var.sqrt() * _white(seed + 200 + i, pred.shape) \
            + texture_error * textured * _white(seed + 300 + i, pred.shape)
        pairs.append((pred, real, 4.0, hr))
        truth.append((mean, var, textured.expand_as(pred)))
    return pairs, truth


def test_conditional_fit_recovers_the_mean_and_the_noise_level_function_not_the_texture_error():
    pairs, _ = _conditional_pairs(6, 0, texture_error=0.1)
    model = fit(pairs, conditional=True, mean_window=3, patch=16, radius=5, variance="residual")
    assert model.conditional and model.mean_filter.shape == (1, 3, 6, 3, 3) and model.log_variance.shape == (1, 3)
    test_pairs, truth = _conditional_pairs(1, 90)
    (pred, _, _, hr), (mean, var, textured) = test_pairs[0], truth[0]
    got = model.mean_correction(pred, 4.0, hr)                 # (10 % with the texture error, 7 % without)
    assert float((got - mean).pow(2).mean().sqrt()) < 0.15 * float(mean.pow(2).mean().sqrt())
    v = model.variance_map(pred, 4.0, hr)
    for where in (textured, ~textured):     # the camera's level everywhere: the texture error (std 0.1,
        ratio = float(v[where].mean() / var[where].mean())     # 6x the noise) is not sampled as noise
        assert 0.8 < ratio < 1.25, ratio
    dark, bright = pred < -0.5, pred > 0.5                       # signal dependence: var = a x + b
    assert float(v[bright].mean()) > 3 * float(v[dark].mean())


def test_the_levels_are_the_geometric_and_harmonic_means_of_a_log_normal_noise_level():
    """Noise whose level varies about a constant, log-normally (spread s^2 = 0.8, constant on 8x8 blocks,
    no conditional mean): the fit measures the spread; the geometric level is exp(E log v), the harmonic
    level 1 / E[1 / v], both computed independently from the true variances (numpy)."""
    s2, v0, size = 0.8, 1e-3, 96
    pairs, true_var = [], []
    for i in range(8):
        hr = _smooth_image(400 + i, size)
        e = math.sqrt(s2) * _white(500 + i, (1, 1, size // 8, size // 8))
        var = v0 * F.interpolate(e, scale_factor=8, mode="nearest").exp().expand_as(hr)
        pairs.append((hr, hr + var.sqrt() * _white(600 + i, hr.shape), 4.0, hr))
        true_var.append(var.numpy())
    v = np.concatenate([t.ravel() for t in true_var])
    geo, har = (fit(pairs, conditional=True, mean_window=1, patch=16, radius=5, level=lv, variance="residual")
                for lv in ("geometric", "harmonic"))
    assert geo.meta["level"] == "geometric" and har.meta["level"] == "harmonic"
    spread = geo.meta["log_variance_spread"]["4"]
    assert abs(spread - s2) < 0.25, spread                      # measured on the flat half: a few hundred blocks
    assert har.meta["log_variance_spread"] == geo.meta["log_variance_spread"]
    shift = torch.zeros(3, dtype=torch.float64)
    shift[0] = spread / 2
    assert torch.allclose(har.log_variance[0], geo.log_variance[0] - shift)   # the same fit, its level lowered
    pred, _, _, hr = pairs[0]
    for model, want in ((geo, math.exp(np.log(v).mean())), (har, 1.0 / np.mean(1.0 / v))):
        got = float(model.variance_map(pred, 4.0, hr).mean())
        assert abs(got / want - 1) < 0.15, (model.meta["level"], got, want)
    assert 1.0 / np.mean(1.0 / v) < 0.75 * math.exp(np.log(v).mean())      # the two differ by exp(-s^2 / 2)
    with pytest.raises(ValueError, match=r"level='median' is not one of \['harmonic', 'geometric'\]"):
        fit(pairs, conditional=True, patch=16, radius=5, level="median")


def test_hr_noise_level_reads_the_noise_of_the_flat_half_and_ignores_planes_and_ramps():
    from degflow.baselines.noise import hr_noise_level, texture
    img = _smooth_image(700, 64)[0]
    noisy = (img + 0.02 * _white(701, img.shape)).unsqueeze(0)
    level = float(hr_noise_level(noisy)[0])
    # reference: Immerkaer's mask by numpy slicing on the luminance, averaged over the pixels whose texture
    # is at most its median
    y = noisy[0].mean(0).numpy()
    r = np.abs(y[:-2, :-2] - 2 * y[:-2, 1:-1] + y[:-2, 2:] - 2 * y[1:-1, :-2] + 4 * y[1:-1, 1:-1] - 2 * y[1:-1, 2:]
               + y[2:, :-2] - 2 * y[2:, 1:-1] + y[2:, 2:])
    t = texture(noisy)[0, 0, 1:-1, 1:-1].numpy()
    assert level == pytest.approx(math.log(r[t <= np.median(t)].mean() + 1e-6), abs=1e-9)
    flat = [float(hr_noise_level((0.1 + q * _white(702, img.shape)).unsqueeze(0))[0]) for q in (0.02, 0.04)]
    assert flat[1] - flat[0] == pytest.approx(math.log(2), abs=1e-3)   # twice the noise, twice the level
    ramp = torch.linspace(-0.5, 0.5, 32, dtype=torch.float64).expand(1, 3, 32, 32)
    assert float(hr_noise_level(ramp)[0]) == pytest.approx(math.log(1e-6), abs=1e-6)   # blind to ramps
    assert bool(hr_noise_level(torch.zeros(1, 3, 2, 8)).isnan().all())                 # too small to read


def test_photo_level_follows_the_hr_images_own_noise():
    """Photos taken at different exposures: HR image i carries noise of std q_i, its real LR noise of
    variance 4 q_i^2 (one noise level function cannot fit them all); the photo term recovers
    log sigma^2 = 2 log q + const (beta 2 against the HR level, which is log q + const) and the level
    of an unseen photo."""
    size, pairs = 64, []
    qs = [0.004, 0.008, 0.016, 0.032] * 2
    def photo(i, q):
        clean = _smooth_image(800 + i, size)
        hr = clean + q * _white(900 + i, clean.shape)
        return clean, hr, clean + 2 * q * _white(950 + i, clean.shape)
    for i, q in enumerate(qs):
        clean, hr, real = photo(i, q)
        pairs.append((clean, real, 4.0, hr))
    with_photo = fit(pairs, conditional=True, mean_window=1, patch=16, radius=5, level="geometric", variance="residual")
    without = fit(pairs, conditional=True, mean_window=1, patch=16, radius=5, level="geometric", photo_level=False,
                  variance="residual")
    assert with_photo.meta["photo_level"] is True and without.photo_level is None
    beta = float(with_photo.photo_level[0, 0])
    assert 1.7 < beta < 2.3, beta
    for i, q in ((40, 0.003), (41, 0.04)):                     # unseen photos, a little beyond the fitted ones
        clean, hr, _ = photo(i, q)
        got = float(with_photo.variance_map(clean, 4.0, hr).mean())
        assert abs(got / (4 * q * q) - 1) < 0.2, (q, got)
        flat = float(without.variance_map(clean, 4.0, hr).mean())          # one level for every photo
        assert abs(math.log(flat / (4 * q * q))) > math.log(2), (q, flat)
    with pytest.raises(ValueError, match="photo_level must be true or false, got 1"):
        fit(pairs, conditional=True, patch=16, radius=5, photo_level=1)


def test_conditional_sampling_needs_the_hr_image_and_strength_zero_is_exact():
    pairs, _ = _conditional_pairs(3, 10, size=64)
    model = fit(pairs, conditional=True, patch=16, radius=5, variance="residual")
    pred, _, _, hr = pairs[0]
    x = pred.float()
    assert torch.equal(model.sample(x, 4.0, torch.Generator().manual_seed(1), strength=0.0), x)
    with pytest.raises(ValueError, match="conditioned on the HR image: pass hr="):
        model.sample(x, 4.0, torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="hr must be the HR image at true LR size"):
        model.sample(x, 4.0, torch.Generator().manual_seed(1), hr=hr[..., :32])
    a, b = (model.sample(x, 4.0, torch.Generator().manual_seed(s), hr=hr) for s in (1, 1))
    assert torch.equal(a, b) and not torch.equal(a, model.sample(x, 4.0, torch.Generator().manual_seed(2), hr=hr))
    # strength < 1 applies that share of the mean correction; the noise scales with the strength
    quiet = NoiseModel(**{**model.__dict__, "log_variance": torch.full_like(model.log_variance, 0.0)
                          .index_fill_(1, torch.tensor([0]), -60.0)})
    mu = model.mean_correction(x, 4.0, hr)
    for st in (0.5, 1.0, 2.0):
        got = quiet.sample(x.double(), 4.0, torch.Generator().manual_seed(3), strength=st, hr=hr)
        assert torch.allclose(got, (x.double() + min(st, 1.0) * mu).clamp(-1, 1), atol=1e-9)
    # between knots: 0 at scale 1, linear up to the knot
    assert torch.allclose(model.mean_correction(x, 2.5, hr), 0.5 * mu)
    assert torch.allclose(model.variance_map(x, 2.5, hr), 0.5 * model.variance_map(x, 4.0, hr))


def test_conditional_fit_refuses_bad_settings_and_round_trips(tmp_path):
    pairs, _ = _conditional_pairs(2, 20, size=64)
    with pytest.raises(ValueError, match=r"pairs\[0\]: conditional=True needs the HR image"):
        fit([p[:3] for p in pairs], conditional=True, patch=16, radius=5)
    with pytest.raises(ValueError, match="target must be 'residual'.*conditional=False"):
        fit(pairs, conditional=True, target="excess", patch=16, radius=5)
    with pytest.raises(ValueError, match="mean_window must be an odd integer >= 1, got 4"):
        fit(pairs, conditional=True, mean_window=4, patch=16, radius=5)
    with pytest.raises(ValueError, match=r"flat_quantile must be a number in \(0, 1\], got 0"):
        fit(pairs, conditional=True, flat_quantile=0, patch=16, radius=5)
    model = fit(pairs, conditional=True, patch=16, radius=5)
    model.save(tmp_path / "c.pt")
    back = load_noise_model(tmp_path / "c.pt")
    assert back.conditional and torch.equal(back.mean_filter, model.mean_filter)
    assert torch.equal(back.log_variance, model.log_variance) and back.meta["conditional"] is True
    pred, _, _, hr = pairs[0]
    assert torch.equal(back.sample(pred, 4.0, torch.Generator().manual_seed(4), hr=hr),
                       model.sample(pred, 4.0, torch.Generator().manual_seed(4), hr=hr))
    half = model.to_dict()
    half["log_variance"] = None                                # a conditional part missing: not a noise model
    with pytest.raises(ValueError, match="not a noise model"):
        NoiseModel.from_dict(half)
    assert back.photo_level is not None and torch.equal(back.photo_level, model.photo_level)
    before = {k: v for k, v in model.to_dict().items() if k != "photo_level"}
    assert NoiseModel.from_dict(before).photo_level is None   # files written before the photo term load
    bad = model.to_dict()
    bad["photo_level"] = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="not a noise model"):
        NoiseModel.from_dict(bad)
    old = {k: v for k, v in model.to_dict().items()
           if k not in ("mean_filter", "mean_bias", "log_variance", "energy", "energy_floor")}
    assert not NoiseModel.from_dict(old).conditional          # files written before conditional models load
    # the energy model (the default variance) round trips; files written before it sample the residual level
    assert model.meta["variance"] == "energy" and back.energy_floor == model.energy_floor == 0.05
    assert torch.equal(back.energy, model.energy)
    residual = NoiseModel.from_dict({k: v for k, v in model.to_dict().items() if k not in ("energy", "energy_floor")})
    assert residual.energy is None
    assert not torch.equal(residual.variance_map(pred, 4.0, hr), model.variance_map(pred, 4.0, hr))
    for key, val in (("energy", torch.zeros(1, 3, dtype=torch.float64)), ("energy_floor", None), ("energy_floor", 1.5)):
        bad = model.to_dict()
        bad[key] = val
        with pytest.raises(ValueError, match="not a noise model"):
            NoiseModel.from_dict(bad)
    with pytest.raises(ValueError, match=r"variance='white' is not one of \['energy', 'residual'\]"):
        fit(pairs, conditional=True, patch=16, radius=5, variance="white")
    with pytest.raises(ValueError, match=r"energy_floor must be a number in \[0, 1\], got 2"):
        fit(pairs, conditional=True, patch=16, radius=5, energy_floor=2)


def test_the_energy_variance_tops_the_predictions_own_residual_energy_up_to_the_real_one():
    """Real LR = HR + camera noise (variance v); the prediction = HR + an error of its own that the real
    LR does not share and the mean filter cannot remove (heavy ridge), locally 0 to 0.8 v in energy. The
    residual level counts that error as noise and adds it again: the sample's residual energy overshoots
    the real one. The energy variance adds what the real residual has beyond the prediction's own:
    the sample's local residual energy is the real one, wherever the prediction's own error is."""
    from degflow.baselines.noise import energy_features, local_energy

    v, size = 4e-4, 96
    pairs = []
    for i in range(8):
        hr = _smooth_image(1000 + i, size)
        amp = (_smooth_image(1100 + i, size)[:, :1] + 1) / 2 * math.sqrt(0.8 * v)       # [1, 1, h, w] in [0, .9 sd]
        err = amp * torch.sign(_white(1200 + i, (1, 1, size, size))).expand_as(hr)     # the prediction's own error
        pairs.append(((hr + err).clamp(-1, 1), hr + math.sqrt(v) * _white(1300 + i, hr.shape), 4.0, hr))
    kw = {"conditional": True, "mean_window": 1, "ridge": 1e3, "patch": 16, "radius": 5}
    energy, residual = fit(pairs, **kw), fit(pairs, **kw, variance="residual")
    assert energy.energy.shape == (1, 5) and residual.energy is None and energy.meta["energy_spread"]["4"] >= 0
    ratios = {}
    for name, model in (("energy", energy), ("residual", residual)):
        got, want = [], []
        for k, (pred, real, _, hr) in enumerate(pairs[:4]):
            x = model.sample(pred, 4.0, torch.Generator().manual_seed(k), hr=hr)
            got.append(float(local_energy(x - hr).mean()))
            want.append(float(local_energy(real - hr).mean()))
        ratios[name] = sum(got) / sum(want)
    assert 0.85 < ratios["energy"] < 1.15, ratios
    assert ratios["residual"] > 1.3, ratios
    pred, real, _, hr = pairs[0]
    phi = energy_features(pred, hr)
    assert phi.shape == (1, 3, size, size, 5) and torch.allclose(phi[..., 4], (local_energy(pred - hr) + 1e-6).log())
    # where the prediction's own error is large the noise is small (the floor), where it is small, large
    var = energy.variance_map(pred, 4.0, hr)
    mu = energy.mean_correction(pred, 4.0, hr)
    own_c = local_energy((pred + mu).clamp(-1, 1) - hr)
    lo, hi = own_c < torch.quantile(own_c, 0.2), own_c > torch.quantile(own_c, 0.8)
    assert float(var[lo].mean()) > 2 * float(var[hi].mean())
    rough = (hr + 0.2 * torch.sign(_white(1400, hr.shape))).clamp(-1, 1)      # its own energy far above the real one
    floorless = NoiseModel(**{**energy.__dict__, "energy_floor": 0.0})
    assert float(floorless.variance_map(rough, 4.0, hr).max()) == 0.0 < float(energy.variance_map(rough, 4.0, hr).min())


def test_the_energy_model_below_the_first_knot_has_no_mean_and_a_quadratic_energy():
    """Below the first knot nothing was fitted: energy models apply no mean correction there and the real
    LR's energy grows from 0 at s = 1 with the square of (s - 1) / (knot - 1); residual models keep the
    linear ramp of both. Between knots the energy is interpolated linearly."""
    from degflow.baselines.noise import local_energy

    pairs, _ = _conditional_pairs(3, 30, size=64)
    model = fit(pairs, conditional=True, patch=16, radius=5)
    pred, _, _, hr = pairs[0]
    assert torch.equal(model.mean_correction(pred, 2.5, hr), torch.zeros_like(pred, dtype=torch.float64))
    at_knot = model.variance_map(pred, 4.0, hr)
    own_knot = local_energy((pred + model.mean_correction(pred, 4.0, hr)).clamp(-1, 1) - hr)
    target = torch.where(at_knot > model.energy_floor * (at_knot + own_knot) + 1e-12, at_knot + own_knot,
                         at_knot / model.energy_floor)            # the knot's real-LR energy E, either branch
    own = local_energy(pred.to(torch.float64) - hr)               # no mean correction below the knot
    want = torch.maximum(0.25 * target - own, model.energy_floor * 0.25 * target)   # ((2.5 - 1) / 3)^2 = 1/4
    assert torch.allclose(model.variance_map(pred, 2.5, hr), want, rtol=1e-6, atol=1e-12)
    residual = fit(pairs, conditional=True, patch=16, radius=5, variance="residual")
    assert torch.allclose(residual.mean_correction(pred, 2.5, hr), 0.5 * residual.mean_correction(pred, 4.0, hr))
