"""The data options (``data=<name>``): each is one factory and one scan for the validator.

The defaults of every option have ONE home, its config file ``conf/data/<name>.yaml``:
Hydra composes it for ``train.py`` and the validator, and Python callers get the same values
from :func:`option_defaults` / :func:`build_data`. Factories and scanners take every setting
explicitly (no defaults of their own), so no second copy can drift.

    build_data("realsr", root="/data/RealSR_v2_ordered", crop_size=64)   # DataBundle
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from degflow.data.common import DataBundle, Report
from degflow.data.demo import demo_data, scan_demo
from degflow.data.paired import paired_data, scan_paired
from degflow.data.realsr import ROLES, realsr_data, scan_realsr
from degflow.infra.conf import CONF_DIR

__all__ = ["DataOption", "DATA_OPTIONS", "data_option", "option_defaults", "option_of_target",
           "build_data"]


@dataclass(frozen=True)
class DataOption:
    """One ``data=<name>`` choice: its factory and the validator's scan of a config dict."""

    factory: Callable[..., DataBundle]
    scan: Callable[[dict[str, Any], bool, tuple[str, ...]], Report]

    @property
    def target(self) -> str:
        """The ``_target_`` naming the factory in conf/data/<name>.yaml."""
        return f"{self.factory.__module__}.{self.factory.__name__}"


def _root(data: dict[str, Any], option: str) -> str:
    root = data.get("root")
    if root in (None, "", "???"):
        raise ValueError(f"data.root is required for data={option}: pass data.root=/path")
    return root


def _scan_demo(data: dict[str, Any], deep: bool, roles: tuple[str, ...] = ROLES) -> Report:
    return scan_demo(data["train_scales"], data["val_scales"], data["val_fraction"], deep=deep, roles=roles)


def _scan_realsr(data: dict[str, Any], deep: bool, roles: tuple[str, ...] = ROLES) -> Report:
    return scan_realsr(_root(data, "realsr"), data["camera"], data["train_split"], data["val_split"],
                       data["test_split"], data["val_fraction"], data["seed"], data["train_scales"],
                       data["val_scales"], deep=deep, roles=roles)


def _scan_paired(data: dict[str, Any], deep: bool, roles: tuple[str, ...] = ROLES) -> Report:
    root = _root(data, "paired")
    has_test = data["test_root"] is not None or (Path(root).expanduser() / "test").is_dir()
    return scan_paired(root, data["train_scales"], data["val_scales"], data["val_fraction"],
                       data["val_root"], data["test_root"], data["seed"], deep=deep,
                       roles=tuple(r for r in roles if r != "test" or has_test))


#: Every data option, by its config name (conf/data/<name>.yaml).
DATA_OPTIONS: dict[str, DataOption] = {
    "demo": DataOption(demo_data, _scan_demo),
    "realsr": DataOption(realsr_data, _scan_realsr),
    "paired": DataOption(paired_data, _scan_paired),
}


def data_option(name: str) -> DataOption:
    """The option ``data=<name>``; ValueError listing the valid names."""
    if name not in DATA_OPTIONS:
        raise ValueError(f"data={name!r} is not a data option; valid options are "
                         f"{list(DATA_OPTIONS)}")
    return DATA_OPTIONS[name]


def option_of_target(target: str) -> str:
    """The option whose factory ``_target_`` names exactly (``data._target_``)."""
    for name, option in DATA_OPTIONS.items():
        if option.target == target:
            return name
    raise ValueError(f"data._target_={target!r} is not a data option's factory; valid targets "
                     f"are {[o.target for o in DATA_OPTIONS.values()]}")


def option_defaults(name: str) -> dict[str, Any]:
    """The settings of ``data=<name>`` as written in conf/data/<name>.yaml (without
    ``_target_``; mandatory values are ``'???'``)."""
    data_option(name)
    node = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")
    plain = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    plain.pop("_target_", None)
    return plain


def build_data(name: str, **settings: Any) -> DataBundle:
    """The DataBundle of ``data=<name>`` with ``settings`` over the option's defaults;
    ValueError for a setting the option does not have."""
    defaults = option_defaults(name)
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"data={name} has no setting(s) {unknown}; valid settings are "
                         f"{sorted(defaults)}")
    return data_option(name).factory(**{**defaults, **settings})
