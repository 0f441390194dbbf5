"""``python -m degflow.quickstart``: the main job in one command, on the bundled demo data.

1. trains stage 1 (RAE) and stage 2 (LFM) on ``data=demo`` (``out/rae``, ``out/lfm``);
2. synthesizes an LR set at continuous scales from bundled photos the model never trained on
   (``out/dataset``, the layout of ``synthesize.py``) and draws them (``out/strip.png``);
3. evaluates the model on the demo test split with the baselines (``out/evaluation``, the
   output of ``python -m degflow.evaluate``);
4. prints where everything is.

Settings and the per-budget overrides of each step: ``conf/quickstart.yaml``. Each step is a
function (:func:`train_demo_model`, :func:`synthesize_photos`, :func:`continuous_strip`,
:func:`evaluate_model`), so the notebook (``notebooks/demo.ipynb``) runs the same code.
Re-running resumes: a finished training run is not trained again, finished outputs are skipped.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from degflow.cli.app import CONF_DIR, register_resolvers, run_cli, to_plain
from degflow.infra.console import say

log = logging.getLogger("degflow.quickstart")  # also when run as __main__

__all__ = ["BUDGETS", "compose_config", "train_demo_model", "synthesize_photos", "continuous_strip",
           "evaluate_model", "quickstart"]

BUDGETS = ("demo", "tiny")


def compose_config(name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``conf/{name}.yaml`` composed with ``overrides``, as plain Python; works inside a Hydra
    app (this entry point) and outside one (a notebook, a test)."""
    register_resolvers()
    if GlobalHydra.instance().is_initialized():
        return to_plain(compose(name, overrides=list(overrides)))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(compose(name, overrides=list(overrides)))


def budget_overrides(budget: str) -> dict[str, list[str]]:
    """``{"rae": [...], "lfm": [...], "evaluate": [...]}``: the overrides of ``budgets.<budget>``."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is not one of {list(BUDGETS)}")
    return compose_config("quickstart", [f"budget={budget}"])["budgets"][budget]


def _lpips_overrides(weights: str | Path | None, loss: bool) -> list[str]:
    if weights is None:
        return []
    folder = Path(weights)
    if not folder.is_dir():
        raise ValueError(f"lpips_backbone_weights={str(weights)!r} is not a folder (expected one holding "
                         "vgg16_features.pth and alexnet_features.pth)")
    found = [f"eval.lpips_backbone_weights={folder / 'alexnet_features.pth'}"]
    return found + ([f"loss.lpips_backbone_weights={folder / 'vgg16_features.pth'}"] if loss else [])


def train_demo_model(out: str | Path, budget: str = "demo", device: str = "auto",
                     lpips_backbone_weights: str | Path | None = None) -> Path:
    """Train both stages on ``data=demo`` into ``out/rae`` and ``out/lfm``; the stage-2 checkpoint.

    Each stage resumes (or, when finished, is only re-validated from its metrics) when its
    folder already holds a run.
    """
    from degflow.training import train

    out = Path(out)
    steps = budget_overrides(budget)
    common = ["logger=none", f"device={device}", f"output_root={out}"]
    rae_dir, lfm_dir = out / "rae", out / "lfm"
    train(compose_config("config", ["stage=rae", *common, *steps["rae"]]), rae_dir)
    train(compose_config("config", ["stage=lfm", *common, f"rae_ckpt={rae_dir / 'checkpoints' / 'last.pt'}",
                                    *_lpips_overrides(lpips_backbone_weights, loss=True), *steps["lfm"]]), lfm_dir)
    return lfm_dir / "checkpoints" / "last.pt"


def demo_photos(names: Sequence[str]) -> list[Path]:
    """Paths of scikit-image's bundled photos ``names`` (``photos`` key); ValueError listing the valid ones."""
    from degflow.data.demo import skimage_data_dir

    folder = skimage_data_dir()
    valid = sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    missing = [n for n in names if n not in valid]
    if missing or not names:
        raise ValueError(f"photos={list(names)}: {missing or 'none given'} not among scikit-image's bundled "
                         f"photos {valid}")
    return [folder / n for n in names]


def synthesize_photos(ckpt: str | Path, out: str | Path, photos: Sequence[str], scales: Sequence[float],
                      device: str = "auto") -> Path:
    """Copy ``photos`` to ``out/photos`` and write the LR set ``out/dataset`` (synthesize.py's layout,
    ``size=both``) at ``scales``; returns the dataset folder. Raises ValueError if an image failed."""
    from degflow.generation import Synthesizer
    from degflow.jobs.lr_dataset import write_lr_dataset

    out = Path(out)
    source = out / "photos"
    source.mkdir(parents=True, exist_ok=True)
    for path in demo_photos(photos):
        if not (source / path.name).is_file():
            shutil.copyfile(path, source / path.name)
    synth = Synthesizer.from_checkpoint(ckpt, device=device)
    summary = write_lr_dataset(synth, source, out / "dataset", scales, size="both")
    if summary.failures:
        raise ValueError(f"synthesis of {source} failed for some images: {summary.line()}")
    return out / "dataset"


@torch.no_grad()
def continuous_strip(ckpt: str | Path, photos: Sequence[str], scales: Sequence[float], device: str = "auto",
                     crop: int = 192) -> torch.Tensor:
    """A labelled strip: one row per photo (its centre crop of at most ``crop`` pixels), one column
    per scale (HR first) with the trajectory time t, generated from the HR image only (at HR size).
    Returns ``[3, H, W]`` in [-1, 1] (:func:`degflow.viz.strips.labelled_strip`)."""
    from degflow.core.scales import scale_key
    from degflow.data.images import read_image
    from degflow.data.transforms import crop_to_multiple
    from degflow.generation import Synthesizer
    from degflow.viz.strips import labelled_strip

    synth = Synthesizer.from_checkpoint(ckpt, device=device)
    times = synth.scale_times(scales)
    rows = {}
    for path in demo_photos(photos):
        hr = read_image(path)                                              # [3, H, W]
        hr = crop_to_multiple(hr, 8, max_size=crop)                        # [3, h, w], centre, h, w <= crop
        lr = synth(hr[None].to(synth.device), scales)                      # {s: [1, 3, h, w]}
        rows[path.stem] = [hr] + [lr[s][0].cpu() for s in scales]
    seen = set(synth.train_scales)
    columns = ["HR"] + [f"{scale_key(s)}{'' if s in seen else '*'}\nt={times[s]:.2f}" for s in scales]
    return labelled_strip(rows, columns, title="generated from the HR image only (* scale never trained on)")


def evaluate_model(ckpt: str | Path, out: str | Path, budget: str = "demo", device: str = "auto",
                   lpips_backbone_weights: str | Path | None = None) -> dict[str, Any]:
    """``python -m degflow.evaluate`` on the demo test split into ``out``: eval.md / eval.json /
    metric_vs_scale.png / crops_*.png. Returns :func:`degflow.jobs.evaluation.run`'s outcome."""
    from degflow.jobs.evaluation import run

    config = compose_config("evaluate", [f"ckpt={ckpt}", f"out={out}", f"device={device}",
                                         *_lpips_overrides(lpips_backbone_weights, loss=False),
                                         *budget_overrides(budget)["evaluate"]])
    return run(config, out)


def quickstart(out: str | Path, budget: str = "demo", scales: Sequence[float] = (1.5, 2.5, 3.3),
               photos: Sequence[str] = ("chelsea.png", "motorcycle_right.png"), device: str = "auto",
               lpips_backbone_weights: str | Path | None = None) -> dict[str, Path]:
    """Run the whole demo (module docstring) into ``out``; returns ``{what: path}`` and prints it."""
    from degflow.core.scales import expand_scales
    from degflow.data.images import write_image

    out = Path(out)
    scales = expand_scales(list(scales), "scales")
    started = time.perf_counter()
    ckpt = train_demo_model(out, budget, device, lpips_backbone_weights)
    dataset = synthesize_photos(ckpt, out, photos, scales, device)
    strip = out / "strip.png"
    write_image(strip, continuous_strip(ckpt, photos, scales, device))
    evaluation = evaluate_model(ckpt, out / "evaluation", budget, device, lpips_backbone_weights)
    paths = {
        "stage-1 run": out / "rae",
        "stage-2 run": out / "lfm",
        "checkpoint": ckpt,
        "loss curves": out / "lfm" / "loss_curve.png",
        "LR dataset": dataset,
        "strip": strip,
        "metrics table": Path(evaluation["paths"]["markdown"]),
        "metric vs scale": out / "evaluation" / "metric_vs_scale.png",
    }
    lines = [f"quickstart finished in {time.perf_counter() - started:.0f} s (budget={budget}). Everything is in {out}/"]
    lines += [f"  {k + ':':17s}{v}" for k, v in paths.items()]
    lines.append(f"  next: python synthesize.py ckpt={ckpt} input=<your HR folder> out=<dataset folder>")
    say(log, "\n".join(lines))
    return paths


def main(cfg: DictConfig) -> None:
    from degflow.infra.cluster import set_threads

    c = to_plain(cfg)
    set_threads(c["threads"])
    quickstart(HydraConfig.get().runtime.output_dir, c["budget"], c["scales"], c["photos"], c["device"],
               c["lpips_backbone_weights"])


def cli() -> None:
    run_cli(main, "quickstart")


if __name__ == "__main__":
    cli()
