"""LPIPS with the real, pretrained ImageNet backbone, loadable without internet.

The ``lpips`` package ships only its small linear heads; the backbone (AlexNet / VGG16
convolutions) normally comes from torchvision, which downloads it on first use. Here the
backbone is always taken from a local file, found in this order:

1. an explicit file (``backbone_weights=``; config keys ``loss.lpips_backbone_weights`` for
   the VGG training loss, ``eval.lpips_backbone_weights`` for the AlexNet metric);
2. the directory named by the environment variable ``DEGFLOW_LPIPS_WEIGHTS``, holding
   ``vgg16_features.pth`` / ``alexnet_features.pth``;
3. torchvision's own download cache (``torch.hub.get_dir()/checkpoints/`` with
   torchvision's file names, e.g. ``vgg16-397923af.pth``), if it was downloaded before;
4. torchvision's normal download into that cache (skipped when ``DEGFLOW_LPIPS_NO_DOWNLOAD=1``).

Accepted files are torchvision-format state dicts: either a whole ``alexnet()`` /
``vgg16()`` state dict or just its ``features.N.weight`` / ``features.N.bias`` entries.
There is never a silent fall back to a random backbone: when no
file is found, :class:`MissingLPIPSWeightsError` says how to provide one.

Pooling (``pooling=``, config key ``loss.lpips_pooling``): ``max`` is the lpips package's
network; ``avg`` is the same pretrained VGG16 and linear heads with every max-pool replaced
by a 2x2 / stride-2 average pool, which is the authors' training loss (piq's LPIPS with
``replace_pooling=True``). The two are not interchangeable: on degraded pairs the average-
pooling distance is about 0.7x the max-pooling one and its input gradients differ.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from degflow.infra.digests import describe_load_error

__all__ = [
    "ENV_VAR",
    "VALID_NETS",
    "VALID_POOLINGS",
    "LPIPSWeightsError",
    "MissingLPIPSWeightsError",
    "InvalidLPIPSWeightsError",
    "LPIPSModule",
    "find_lpips_weights",
    "lpips_weights_hint",
    "load_lpips",
]

ENV_VAR = "DEGFLOW_LPIPS_WEIGHTS"
#: Set to 1 to forbid the torchvision download attempt (air-gapped clusters, tests).
NO_DOWNLOAD_ENV_VAR = "DEGFLOW_LPIPS_NO_DOWNLOAD"

# net name -> (file name looked up in $DEGFLOW_LPIPS_WEIGHTS, torchvision builder name)
_NETS: dict[str, tuple[str, str]] = {
    "vgg": ("vgg16_features.pth", "vgg16"),
    "alex": ("alexnet_features.pth", "alexnet"),
}
VALID_NETS: tuple[str, ...] = tuple(_NETS)
#: Pooling of the backbone: the lpips package's ``max``, or ``avg`` (VGG only, the authors').
VALID_POOLINGS: tuple[str, ...] = ("max", "avg")

# Which config key names the backbone file, by net (used in error messages only).
_DEFAULT_CONFIG_KEY = {
    "vgg": "loss.lpips_backbone_weights",
    "alex": "eval.lpips_backbone_weights",
}


class LPIPSWeightsError(ValueError):
    """Base class for problems with the LPIPS backbone weights."""


class MissingLPIPSWeightsError(LPIPSWeightsError):
    """No pretrained backbone file could be found or downloaded."""


class InvalidLPIPSWeightsError(LPIPSWeightsError):
    """A backbone file was found but cannot be read or lacks the needed layers."""


def _torchvision_url(net: str) -> str:
    """torchvision's download address of the ImageNet backbone of ``net``."""
    from torchvision import models

    enum = models.VGG16_Weights if net == "vgg" else models.AlexNet_Weights
    return enum.IMAGENET1K_V1.url


def _torchvision_cache_name(net: str) -> str:
    """torchvision's standard checkpoint file name for the ImageNet backbone of ``net``."""
    return Path(urlparse(_torchvision_url(net)).path).name


def _torchvision_cache_path(net: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _torchvision_cache_name(net)


def _how_to_provide(net: str, config_key: str) -> str:
    file_name = _NETS[net][0]
    return (
        f"Provide the pretrained {_NETS[net][1]} backbone for LPIPS (net={net!r}) in one of "
        f"these ways:\n"
        f"  1. set the config key `{config_key}` (or pass backbone_weights=) to a .pth file;\n"
        f"  2. set the environment variable {ENV_VAR} to a directory containing "
        f"`{file_name}`;\n"
        f"  3. place torchvision's ImageNet checkpoint at {_torchvision_cache_path(net)} "
        f"(torchvision's standard file name `{_torchvision_cache_name(net)}`).\n"
        f"Accepted files are torchvision-format state dicts: a whole "
        f"torchvision `{_NETS[net][1]}()` state dict, or only its `features.N.weight` / "
        f"`features.N.bias` entries (as in a `{file_name}` for option 2). "
        f"(torchvision's own download into that cache needs internet access.)"
    )


def _check_net(net: str) -> str:
    if not isinstance(net, str) or net not in _NETS:
        raise ValueError(
            f"Unknown LPIPS backbone net={net!r} (config key `loss.lpips_net`); "
            f"expected one of {list(VALID_NETS)}."
        )
    return net


def _resolve_weights(
    net: str, backbone_weights: str | Path | None, config_key: str, download: bool = True
) -> tuple[Path, str]:
    """Find the backbone file for ``net``. Returns (path, source description). ``download=False``
    (or ``$DEGFLOW_LPIPS_NO_DOWNLOAD=1``) skips torchvision's download."""
    if backbone_weights is not None:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise MissingLPIPSWeightsError(
                f"LPIPS backbone file {str(path)!r} (from `{config_key}` / backbone_weights=) "
                f"does not exist or is not a file.\n" + _how_to_provide(net, config_key)
            )
        return path, f"`{config_key}`"

    notes = []
    env = os.environ.get(ENV_VAR)
    if env:
        env_dir = Path(env).expanduser()
        if not env_dir.is_dir():
            raise MissingLPIPSWeightsError(
                f"{ENV_VAR}={env!r} is not a directory; it must name a directory containing "
                f"`{_NETS[net][0]}`.\n" + _how_to_provide(net, config_key)
            )
        candidate = env_dir / _NETS[net][0]
        if candidate.is_file():
            return candidate, f"${ENV_VAR}"
        notes.append(f"{ENV_VAR}={env!r} is set but has no `{_NETS[net][0]}`.")

    cached = _torchvision_cache_path(net)
    if cached.is_file():
        return cached, "torchvision cache"
    notes.append(f"No torchvision checkpoint at {cached}.")
    if download and os.environ.get(NO_DOWNLOAD_ENV_VAR, "0") != "1":
        try:  # the normal torchvision download, into its cache; fails fast on offline machines
            torch.hub.download_url_to_file(_torchvision_url(net), str(cached), progress=False)
            return cached, "torchvision download"
        except Exception as err:  # no network, proxy, ... -> explain how to provide the file
            notes.append(f"Downloading it from torchvision failed ({type(err).__name__}: {err}).")

    raise MissingLPIPSWeightsError(
        f"No pretrained backbone weights found for LPIPS (net={net!r}). "
        + " ".join(notes)
        + "\n"
        + _how_to_provide(net, config_key)
    )


def find_lpips_weights(net: str, backbone_weights: str | Path | None = None, config_key: str | None = None,
                       download: bool = True) -> Path:
    """The backbone file :func:`load_lpips` would use for ``net``, found without building anything:
    for checking prerequisites before a job starts. With ``download=False`` only local files count
    (``backbone_weights``, ``$DEGFLOW_LPIPS_WEIGHTS``, torchvision's cache). Raises
    :class:`MissingLPIPSWeightsError` when there is none (the message says how to provide one)."""
    net = _check_net(net)
    key = config_key or ("loss.lpips_backbone_weights" if net == "vgg" else "eval.lpips_backbone_weights")
    return _resolve_weights(net, backbone_weights, key, download=download)[0]


def lpips_weights_hint(net: str, config_key: str) -> str:
    """One line: how to give a job the LPIPS backbone of ``net`` offline."""
    return (f"set {ENV_VAR}=<folder holding {_NETS[_check_net(net)][0]}> or {config_key}=<that file> "
            f"(online, torchvision downloads it into {_torchvision_cache_path(net).parent})")


def _read_state_dict(path: Path, net: str, config_key: str) -> Mapping[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, not a torch file, pickled code, ...
        raise InvalidLPIPSWeightsError(
            f"Cannot read LPIPS backbone file {str(path)!r} ({describe_load_error(exc)}). Expected a "
            f"torchvision-format state dict saved with torch.save (`{config_key}` or ${ENV_VAR}: see the docstring "
            f"of degflow.metrics.perceptual)"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise InvalidLPIPSWeightsError(
            f"LPIPS backbone file {str(path)!r} holds a {type(obj).__name__}, expected a "
            f"state dict (mapping of `features.N.weight` / `features.N.bias` to tensors).\n"
            + _how_to_provide(net, config_key)
        )
    return obj


def _backbone_convs(lp: nn.Module) -> dict[str, nn.Conv2d]:
    """``features.N`` name -> conv module of lpips' backbone slices.

    lpips' ``pretrained_networks`` split torchvision's ``features`` into ``slice1..sliceN``
    keeping the torchvision layer index as each child's name, so ``net.sliceK.N`` is
    torchvision's ``features.N``.
    """
    convs: dict[str, nn.Conv2d] = {}
    for slice_name, block in lp.net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for idx, layer in block.named_children():
            if isinstance(layer, nn.Conv2d):
                convs[f"features.{idx}"] = layer
    assert convs, "lpips backbone has no conv layers; lpips package layout changed?"
    return convs


def _load_backbone(lp: nn.Module, sd: Mapping[str, Tensor], path: Path, net: str,
                   config_key: str) -> None:
    convs = _backbone_convs(lp)
    missing, bad_shape = [], []
    for name, conv in convs.items():
        for pname, param in (("weight", conv.weight), ("bias", conv.bias)):
            key = f"{name}.{pname}"
            value = sd.get(key)
            if not isinstance(value, Tensor):
                missing.append(key)
            elif tuple(value.shape) != tuple(param.shape):
                bad_shape.append(f"{key}: file {tuple(value.shape)} vs needed {tuple(param.shape)}")
    if missing or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if bad_shape:
            parts.append(f"wrong shapes [{'; '.join(bad_shape)}]")
        raise InvalidLPIPSWeightsError(
            f"LPIPS backbone file {str(path)!r} does not fit the {_NETS[net][1]} backbone "
            f"(net={net!r}): " + ", ".join(parts) + ". Is it the file for another net?\n"
            + _how_to_provide(net, config_key)
        )
    with torch.no_grad():
        for name, conv in convs.items():
            conv.weight.copy_(sd[f"{name}.weight"].to(conv.weight.dtype))
            conv.bias.copy_(sd[f"{name}.bias"].to(conv.bias.dtype))


def _load_linear_heads(lp: nn.Module, net: str) -> None:
    """Load the package's v0.1 linear heads, checking every head key is present."""
    import lpips

    head_file = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    if not head_file.is_file():
        raise MissingLPIPSWeightsError(
            f"The lpips package has no linear-head file {head_file}; reinstall `lpips>=0.1.4`."
        )
    heads = torch.load(head_file, map_location="cpu", weights_only=True)
    # `lin0..linN` (the `lins` ModuleList holds the same modules under a second name).
    own = [k for k in lp.state_dict() if re.match(r"lin\d+\.", k)]
    absent = sorted(set(own) - set(heads))
    assert own and not absent, f"lpips head file {head_file} lacks {absent}"
    result = lp.load_state_dict({k: heads[k] for k in own}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys


def _average_pooling(lp: nn.Module) -> int:
    """Replace every max-pool of lpips' backbone slices by an average pool of the same
    window (VGG16: 2x2, stride 2). Returns how many were replaced."""
    replaced = 0
    for slice_name, block in lp.net.named_children():
        if not slice_name.startswith("slice"):
            continue
        for idx, layer in list(block.named_children()):
            if isinstance(layer, nn.MaxPool2d):
                block._modules[idx] = nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                                   ceil_mode=layer.ceil_mode)
                replaced += 1
    assert replaced, "lpips backbone has no max-pool layers; lpips package layout changed?"
    return replaced


class LPIPSModule(nn.Module):
    """Frozen LPIPS v0.1 distance with a pretrained backbone.

    ``forward(x, y)``: x, y ``[B, 3, H, W]`` in [-1, 1] -> ``[B]`` distances. All parameters
    are frozen and the module stays in eval mode (``.train()`` does not switch on the
    heads' dropout), but gradients flow to the inputs, so it works as a training loss.
    Build it with :func:`load_lpips`.
    """

    def __init__(self, inner: nn.Module, net: str, weights_path: Path, source: str,
                 pooling: str = "max"):
        super().__init__()
        self.inner = inner
        self.net = net
        self.pooling = pooling
        self.weights_path = weights_path
        self.source = source
        for p in self.inner.parameters():
            p.requires_grad_(False)
        self.inner.eval()

    def train(self, mode: bool = True) -> "LPIPSModule":
        # Always evaluate: the LPIPS heads contain dropout layers.
        super().train(False)
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS expects two image batches [B, 3, H, W] of equal shape in [-1, 1]; "
                f"got {tuple(x.shape)} and {tuple(y.shape)}."
            )
        d = self.inner(x, y)  # [B, 1, 1, 1]
        return d.reshape(x.shape[0])

    def extra_repr(self) -> str:
        return f"net={self.net!r}, pooling={self.pooling!r}, weights={str(self.weights_path)!r} ({self.source})"


def load_lpips(
    net: str = "vgg",
    backbone_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    config_key: str | None = None,
    pooling: str = "max",
) -> LPIPSModule:
    """Build a frozen LPIPS v0.1 module with a pretrained backbone (a new instance per call:
    callers may move or convert theirs without affecting anyone else's).

    Args:
        net: "vgg" (training loss) or "alex" (the standard LPIPS metric); config key
            ``loss.lpips_net``.
        backbone_weights: torchvision-format backbone state dict file; when None, looked up
            in ``$DEGFLOW_LPIPS_WEIGHTS`` then torchvision's download cache.
        device: where the module lives.
        config_key: the config key to name in error messages; defaults to
            ``loss.lpips_backbone_weights`` (vgg) / ``eval.lpips_backbone_weights`` (alex).
        pooling: ``"max"`` (the lpips package's network, the standard metric) or ``"avg"``
            (VGG only: every max-pool replaced by average pooling, the authors' loss;
            config key ``loss.lpips_pooling``).

    Raises:
        ValueError: unknown ``net``.
        MissingLPIPSWeightsError: no backbone file found (message says how to provide one).
        InvalidLPIPSWeightsError: the file is unreadable or lacks / misshapes a needed layer.
    """
    net = _check_net(net)
    if pooling not in VALID_POOLINGS or (pooling == "avg" and net != "vgg"):
        raise ValueError(
            f"LPIPS pooling={pooling!r} (config key `loss.lpips_pooling`) is not valid for "
            f"net={net!r}; expected one of {list(VALID_POOLINGS)}, 'avg' with net='vgg' only."
        )
    config_key = config_key or _DEFAULT_CONFIG_KEY[net]
    path, source = _resolve_weights(net, backbone_weights, config_key)
    path = path.resolve()
    sd = _read_state_dict(path, net, config_key)

    import lpips

    with warnings.catch_warnings():
        # torchvision's deprecation warnings about `pretrained=` inside lpips.
        warnings.simplefilter("ignore", UserWarning)
        inner = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True,
                            verbose=False)
    _load_linear_heads(inner, net)
    _load_backbone(inner, sd, path, net, config_key)
    if pooling == "avg":
        _average_pooling(inner)
    return LPIPSModule(inner, net, path, source, pooling).to(torch.device(device))
