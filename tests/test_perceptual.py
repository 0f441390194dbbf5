"""LPIPS with the real pretrained backbone, loaded offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from degflow.metrics.perceptual import (
    ENV_VAR,
    InvalidLPIPSWeightsError,
    MissingLPIPSWeightsError,
    load_lpips,
)

GOLDEN = {"I03": 0.7237, "I04": 0.2572, "I06": 0.0508, "I08": 0.0521, "I19": 0.4253}


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}; skipping (shared files are not in the repo)")
    return path


@pytest.fixture
def weights_dir(shared_dir) -> Path:
    return _need(shared_dir / "weights", "shared LPIPS backbone weights")


@pytest.fixture
def no_weight_sources(tmp_path, monkeypatch):
    """No env var and an empty torch hub dir: only an explicit file can provide weights."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    old = torch.hub.get_dir()
    hub = tmp_path / "hub"
    hub.mkdir()
    torch.hub.set_dir(str(hub))
    try:
        yield hub
    finally:
        torch.hub.set_dir(old)


def _read(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0


@pytest.mark.slow
def test_lpips_alex_reproduces_published_values(shared_dir, weights_dir):
    golden = _need(shared_dir / "data" / "lpips_golden", "LPIPS golden pairs")
    metric = load_lpips("alex", weights_dir / "alexnet_features.pth")
    measured = {}
    with torch.no_grad():
        for name, expected in GOLDEN.items():
            ref, dist = _read(golden / "ref" / f"{name}.png"), _read(golden / "dist" / f"{name}.png")
            assert ref.shape == (1, 3, 384, 512)
            measured[name] = metric(ref, dist).item()
    for name, expected in GOLDEN.items():
        assert abs(round(measured[name], 4) - expected) < 5e-5, (name, measured[name], expected)


@pytest.mark.slow
def test_vgg_lpips_is_deterministic_zero_on_identity_and_differentiable_in_input(weights_dir):
    lp = load_lpips("vgg", weights_dir / "vgg16_features.pth")
    # The backbone is the file's, not a random init.
    sd = torch.load(weights_dir / "vgg16_features.pth", map_location="cpu", weights_only=True)
    assert torch.equal(getattr(lp.inner.net.slice5, "28").weight, sd["features.28.weight"])

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    y = torch.rand(2, 3, 48, 48, generator=g) * 2 - 1
    lp.train()  # must not switch on the heads' dropout
    assert not lp.training and not lp.inner.training
    d1, d2 = lp(x, y), lp(x, y)
    assert d1.shape == (2,)
    assert torch.equal(d1, d2)
    assert (d1 > 0).all()
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-7)

    xg = x.clone().requires_grad_(True)
    lp(xg, y).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in lp.parameters())


def test_every_caller_gets_its_own_instance_so_converting_one_leaves_the_others(weights_dir):
    a = load_lpips("alex", weights_dir / "alexnet_features.pth")
    b = load_lpips("alex", str(weights_dir / "alexnet_features.pth"))
    assert a is not b
    a.double()
    assert next(b.parameters()).dtype == torch.float32
    x, y = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(a(x.double(), y.double()).float(), b(x, y), atol=1e-5)


def test_env_var_directory_provides_weights(weights_dir, no_weight_sources, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(weights_dir))
    lp = load_lpips("alex")
    assert lp.weights_path == (weights_dir / "alexnet_features.pth").resolve()


def test_torchvision_cache_file_provides_weights(weights_dir, no_weight_sources):
    ckpt = no_weight_sources / "checkpoints"
    ckpt.mkdir()
    shutil.copyfile(weights_dir / "alexnet_features.pth", ckpt / "alexnet-owt-7be5be79.pth")
    lp = load_lpips("alex")
    assert lp.source == "torchvision cache"


def test_missing_weights_raise_with_instructions(no_weight_sources):
    with pytest.raises(MissingLPIPSWeightsError) as err:
        load_lpips("vgg")
    msg = str(err.value)
    assert "loss.lpips_backbone_weights" in msg
    assert ENV_VAR in msg
    assert "vgg16-397923af.pth" in msg and str(no_weight_sources) in msg
    assert "features.N" in msg
    assert isinstance(err.value, ValueError)

    with pytest.raises(MissingLPIPSWeightsError, match="eval.lpips_backbone_weights"):
        load_lpips("alex")
    with pytest.raises(MissingLPIPSWeightsError, match="does not exist"):
        load_lpips("alex", no_weight_sources / "nope.pth")


def test_corrupt_or_wrong_file_raises_naming_the_file(tmp_path, weights_dir):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(InvalidLPIPSWeightsError, match="corrupt.pth"):
        load_lpips("alex", bad)

    # AlexNet weights handed to the VGG loss: wrong shapes / missing layers, named.
    with pytest.raises(InvalidLPIPSWeightsError) as err:
        load_lpips("vgg", weights_dir / "alexnet_features.pth")
    msg = str(err.value)
    assert "alexnet_features.pth" in msg and "features.28.weight" in msg

    partial = tmp_path / "partial.pth"
    sd = torch.load(weights_dir / "alexnet_features.pth", map_location="cpu", weights_only=True)
    del sd["features.10.bias"]
    torch.save(sd, partial)
    with pytest.raises(InvalidLPIPSWeightsError, match=r"partial\.pth.*features\.10\.bias"):
        load_lpips("alex", partial)


def test_unknown_net_lists_valid_options():
    with pytest.raises(ValueError, match=r"loss\.lpips_net.*'vgg', 'alex'"):
        load_lpips("squeeze")


def _independent_lpips_vgg(x: torch.Tensor, y: torch.Tensor, features_file: Path,
                           pooling: str) -> torch.Tensor:
    """LPIPS v0.1 (VGG) written out from its definition, without the lpips package's network:
    torchvision's vgg16 conv stack (optionally every max-pool -> 2x2 average pool), the
    published input scaling, unit-normalised relu1_2..relu5_3 features, squared differences
    weighted by the package's released linear heads, spatial mean, sum over layers."""
    import lpips
    from torchvision.models import vgg16

    features = vgg16().features
    features.load_state_dict({k.removeprefix("features."): v for k, v in torch.load(
        features_file, map_location="cpu", weights_only=True).items()})
    if pooling == "avg":
        for i, layer in enumerate(features):
            if isinstance(layer, torch.nn.MaxPool2d):
                features[i] = torch.nn.AvgPool2d(2, 2)
    heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth",
                       map_location="cpu", weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    taps = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3

    def feats(img: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (img - shift) / scale
        for i, layer in enumerate(features[: taps[-1] + 1]):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    total = torch.zeros(x.shape[0])
    for k, (fx, fy) in enumerate(zip(feats(x), feats(y))):
        w = heads[f"lin{k}.model.1.weight"]                                 # [1, C, 1, 1]
        total = total + ((fx - fy).pow(2) * w).sum(1).mean((1, 2))
    return total


@pytest.mark.parametrize("pooling", ["avg", "max"])
@pytest.mark.slow
def test_vgg_lpips_matches_an_independent_implementation(weights_dir, pooling):
    file = weights_dir / "vgg16_features.pth"
    lp = load_lpips("vgg", file, pooling=pooling)
    assert lp.pooling == pooling
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 64, 48, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 64, 48, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        ours, ref = lp(x, y), _independent_lpips_vgg(x, y, file, pooling)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_average_pooling_lpips_is_a_different_distance(weights_dir):
    """Same weights, pooling replaced: the authors' loss is not the lpips package's."""
    file = weights_dir / "vgg16_features.pth"
    avg, mx = load_lpips("vgg", file, pooling="avg"), load_lpips("vgg", file, pooling="max")
    assert avg is not mx
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in avg.modules())
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in avg.modules()) == 4
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = (x + 0.2 * torch.randn_like(x)).clamp(-1, 1)
    with torch.no_grad():
        assert (avg(x, y) - mx(x, y)).abs().min() > 1e-3


def test_average_pooling_is_vgg_only():
    with pytest.raises(ValueError, match=r"loss\.lpips_pooling.*'max', 'avg'"):
        load_lpips("alex", pooling="avg")
