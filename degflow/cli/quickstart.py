"""``python -m degflow.quickstart``: the main job in one command, on the bundled demo data.

By default it uses the shipped demo model (``ckpt=demo``: ``degflow/assets/demo/model.pt``, card in
docs/DEMO_MODEL.md) and needs no download, no GPU and no training:

1. synthesizes an LR set at continuous scales from bundled photos the model never trained on
   (``out/dataset``, the layout of ``synthesize.py``);
2. draws the real LR beside the generated LR at each scale, with a zoomed crop (``out/strip.png``);
3. measures how the degradation grows with the scale, real vs generated (``out/degradation.md``:
   fine detail kept and noise level per scale, :mod:`degflow.jobs.degradation_profile`);
4. evaluates the model on the demo test split with the baselines (``out/evaluation``, the output of
   ``python -m degflow.evaluate``; the LPIPS column only when its backbone weights are on disk);
5. prints where everything is.

``train=true`` first trains both stages from scratch on ``data=demo`` (``out/rae``, ``out/lfm``) with
the settings of ``budgets.<budget>`` in ``conf/quickstart.yaml`` (``budget=demo``: the shipped model's
recipe; ``tiny``: seconds, meaningless numbers), writes its weights-only file ``out/model.pt`` (the
form of the shipped one; its sha256 is printed) and uses it. Every prerequisite of the whole job is
checked before anything starts. Each step is a function, so the notebook runs the same code.
Re-running resumes: a finished training run is not trained again; an LR set in ``out/dataset`` made
with another model is written again.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping, Sequence
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

__all__ = ["BUDGETS", "compose_config", "lpips_weights_folder", "check_quickstart", "train_demo_model",
           "replace_other_models_dataset", "synthesize_photos", "scale_figure", "profile_model", "evaluate_model",
           "quickstart"]

BUDGETS = ("demo", "tiny")
#: the zoomed square of the figure, HR pixels, and its magnification
ZOOM, ZOOM_FACTOR = 48, 4


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


def lpips_weights_folder(folder: str | Path | None) -> dict[str, Path | None]:
    """``{"vgg": file | None, "alex": file | None}``: the LPIPS backbone files found on disk
    (``folder``, then ``$DEGFLOW_LPIPS_WEIGHTS``, then torchvision's cache); nothing is downloaded."""
    from degflow.metrics.perceptual import MissingLPIPSWeightsError, find_lpips_weights

    if folder is not None and not Path(folder).is_dir():
        raise ValueError(f"lpips_backbone_weights={str(folder)!r} is not a folder (expected one holding "
                         "vgg16_features.pth and alexnet_features.pth)")
    found: dict[str, Path | None] = {}
    for net, name in (("vgg", "vgg16_features.pth"), ("alex", "alexnet_features.pth")):
        given = Path(folder) / name if folder is not None and (Path(folder) / name).is_file() else None
        try:
            found[net] = find_lpips_weights(net, given, download=False)
        except MissingLPIPSWeightsError:
            found[net] = None
    return found


def _train_configs(out: Path, budget: str, device: str, seed: int,
                   weights: Mapping[str, Path | None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The composed stage-1 and stage-2 configs of ``train=true``."""
    steps = budget_overrides(budget)
    common = ["logger=none", f"device={device}", f"output_root={out}", f"seed={seed}"]
    rae = compose_config("config", ["stage=rae", *common, *steps["rae"]])
    lfm_overrides = ["stage=lfm", *common, f"rae_ckpt={out / 'rae' / 'checkpoints' / 'last.pt'}", *steps["lfm"]]
    lfm = compose_config("config", lfm_overrides)
    extra = []
    if float(lfm["loss"]["lpips_weight"]) > 0 and weights["vgg"] is not None:
        extra.append(f"loss.lpips_backbone_weights={weights['vgg']}")
    if lfm["eval"]["lpips"]:  # validation's LPIPS metric: with the weights found, else without it
        extra.append(f"eval.lpips_backbone_weights={weights['alex']}" if weights["alex"] else "eval.lpips=false")
    return rae, compose_config("config", [*lfm_overrides, *extra])


def check_quickstart(out: str | Path, ckpt: str, train: bool, budget: str, device: str, seed: int = 0,
                     weights: Mapping[str, Path | None] | None = None) -> None:
    """Everything the quick start needs, checked in seconds before any work (one-line ValueError
    with the fix): the output folder, the device, the model file, and with ``train`` the
    prerequisites of both training stages (:func:`degflow.training.preflight.check_prerequisites`:
    data, LPIPS weights when the stage-2 loss uses them)."""
    from degflow.infra.checkpoint import load_checkpoint
    from degflow.infra.runtime import resolve_device
    from degflow.training.preflight import check_prerequisites, check_writable

    check_writable(out, "out")
    resolve_device(device)
    if train:
        rae, lfm = _train_configs(Path(out), budget, device, seed, weights or lpips_weights_folder(None))
        check_prerequisites(rae)
        check_prerequisites(lfm, rae_will_exist=True)
    else:
        load_checkpoint(ckpt, kind="lfm", key="ckpt")


def train_demo_model(out: str | Path, budget: str = "demo", device: str = "auto", seed: int = 0,
                     weights: Mapping[str, Path | None] | None = None) -> Path:
    """Train both stages on ``data=demo`` into ``out/rae`` and ``out/lfm`` and write the weights-only
    file ``out/model.pt``; returns its path. Each stage resumes (or, when finished, is only
    re-validated from its metrics) when its folder already holds a run."""
    from degflow.infra.checkpoint import save_weights_only
    from degflow.training import train

    out = Path(out)
    rae, lfm = _train_configs(out, budget, device, seed, weights or lpips_weights_folder(None))
    train(rae, out / "rae")
    train(lfm, out / "lfm")
    digest = save_weights_only(out / "lfm" / "checkpoints" / "last.pt", out / "model.pt")
    say(log, f"weights-only model: {out / 'model.pt'} (digest {digest})")
    return out / "model.pt"


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


def replace_other_models_dataset(dataset: str | Path, checkpoint_sha256: str) -> bool:
    """Remove the quick start's LR set ``dataset`` when its settings record names another model (an
    earlier ``train=true`` or ``ckpt=``) or cannot be read: the set is the quick start's own product,
    written again, where ``synthesize.py`` would refuse to mix two models in one folder. Returns
    whether it was removed."""
    from degflow.infra.digests import read_checked_record

    dataset = Path(dataset)
    record = dataset / "synthesis.json"
    if not record.is_file():
        return False
    try:
        old, _ = read_checked_record(record.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        old = None
    if old is not None and old.get("checkpoint_sha256") == checkpoint_sha256:
        return False
    say(log, f"{dataset} was made with another model; the quick start writes it again")
    shutil.rmtree(dataset)
    return True


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
    replace_other_models_dataset(out / "dataset", synth.checkpoint_sha256)
    summary = write_lr_dataset(synth, source, out / "dataset", scales, size="both")
    if summary.failures:
        raise ValueError(f"synthesis of {source} failed for some images: {summary.line()}")
    return out / "dataset"


def _detail_window(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner (on an 8-pixel grid) of the ``size`` square of ``hr`` [3, H, W] with the most
    fine detail: where blur and noise show best."""
    from degflow.metrics.degradation import band_energy

    h, w = hr.shape[-2:]
    corners = [(y, x) for y in range(0, h - size + 1, 8) for x in range(0, w - size + 1, 8)]
    tiles = torch.stack([hr[:, y:y + size, x:x + size] for y, x in corners])             # [N, 3, size, size]
    return corners[int(band_energy(tiles, 0.125).argmax())]


def _boxed(x: torch.Tensor, y0: int, x0: int, size: int) -> torch.Tensor:
    """``x`` [3, H, W] with a 2-pixel yellow frame around the ``size`` square at (y0, x0)."""
    out = x.clone()
    yellow = torch.tensor([1.0, 1.0, -1.0]).view(3, 1, 1)
    y1, x1 = y0 + size, x0 + size
    for ys, xs in ((slice(y0, y0 + 2), slice(x0, x1)), (slice(y1 - 2, y1), slice(x0, x1)),
                   (slice(y0, y1), slice(x0, x0 + 2)), (slice(y0, y1), slice(x1 - 2, x1))):
        out[:, ys, xs] = yellow
    return out


@torch.no_grad()
def scale_figure(ckpt: str | Path, scales: Sequence[float], device: str = "auto", crop: int = 192,
                 seed: int = 0) -> torch.Tensor:
    """The first picture: for each demo test photo (never trained on), its real LR (the demo's camera
    degradation) and the LR generated from its HR image alone, side by side at every scale, whole
    (a centre crop of ``crop`` pixels) and zoomed (the most detailed 48-pixel square, x4).
    Returns ``[3, H, W]`` in [-1, 1] (:func:`degflow.viz.strips.labelled_strip`)."""
    import torch.nn.functional as F

    from degflow.core.scales import scale_key
    from degflow.data.demo import demo_test_split
    from degflow.data.transforms import crop_to_multiple
    from degflow.generation import Synthesizer
    from degflow.viz.strips import labelled_strip

    scales = sorted(float(s) for s in scales)
    synth = Synthesizer.from_checkpoint(ckpt, device=device)
    times = synth.scale_times(scales)
    split = demo_test_split(scales, seed=seed)
    rows: dict[str, list[torch.Tensor]] = {}

    def zoom(x: torch.Tensor, y0: int, x0: int) -> torch.Tensor:
        return F.interpolate(x[None, :, y0:y0 + ZOOM, x0:x0 + ZOOM], scale_factor=ZOOM_FACTOR, mode="nearest")[0]

    for i in range(len(split)):
        item = split[i]
        hr = crop_to_multiple(item["hr"], 8, max_size=crop)                                  # [3, h, w]
        real = [crop_to_multiple(x, 8, max_size=crop) for x in item["lr"]]                   # per scale
        fake = synth(hr[None].to(synth.device), scales)                                      # {s: [1, 3, h, w]}
        y0, x0 = _detail_window(hr, ZOOM)
        name = item["name"].split("_")[0]                                                  # a short row label
        rows[f"{name}\nreal LR"] = [_boxed(hr, y0, x0, ZOOM)] + real
        rows[f"{name}\ndegflow"] = [hr] + [fake[s][0].cpu() for s in scales]
        rows[f"{name}, zoom\nreal LR"] = [zoom(hr, y0, x0)] + [zoom(x, y0, x0) for x in real]
        rows[f"{name}, zoom\ndegflow"] = [zoom(hr, y0, x0)] + [zoom(fake[s][0].cpu(), y0, x0) for s in scales]
    seen = set(synth.train_scales)
    columns = ["HR photo (input)"] + [f"{scale_key(s)}{'' if s in seen else '*'}  (t={times[s]:.2f})" for s in scales]
    title = ("How a camera's degradation grows with the zoom-out factor x, real vs learned. 'real LR': the demo's "
             "camera model\n(blur, sensor noise, colour shift, JPEG). 'degflow': generated from the HR photo alone by "
             "the model. * = a scale the model\nnever saw in training (it learned x1, x2, x4). LR images shown at HR "
             f"size; zoom rows: the yellow box, {ZOOM_FACTOR}x. Test photos, never trained on.")
    return labelled_strip(rows, columns, title=title)


def profile_model(ckpt: str | Path, scales: Sequence[float], device: str = "auto", seed: int = 0,
                  oracle: bool = False) -> dict[str, Any]:
    """:func:`degflow.jobs.degradation_profile.degradation_profile` of the model on the demo test split
    (``oracle``: with the oracle and the autoencoder's reconstruction of the real LR per knot)."""
    from degflow.data.demo import demo_test_split
    from degflow.generation import Synthesizer
    from degflow.jobs.degradation_profile import degradation_profile

    synth = Synthesizer.from_checkpoint(ckpt, device=device)
    knots = [s for s in synth.train_scales if s != 1.0] if oracle else []
    split = demo_test_split(sorted({*scales, *knots}), seed=seed)
    return degradation_profile(synth, (split[i] for i in range(len(split))), scales, oracle=oracle)


def evaluate_model(ckpt: str | Path, out: str | Path, scales: Sequence[float], budget: str = "demo",
                   device: str = "auto", alexnet: Path | None = None) -> dict[str, Any]:
    """``python -m degflow.evaluate`` on the demo test split into ``out``: eval.md / eval.json /
    metric_vs_scale.png / crops_*.png; LPIPS when ``alexnet`` (its backbone file) is given.
    Returns :func:`degflow.jobs.evaluation.run`'s outcome."""
    from degflow.infra.checkpoint import load_checkpoint
    from degflow.jobs.evaluation import run

    def listed(values) -> str:
        return "[" + ",".join(f"{float(v):g}" for v in values) + "]"

    knots = [float(s) for s in load_checkpoint(ckpt, kind="lfm")["train_scales"]]   # ae_interp needs their real LR
    lpips = [f"eval.lpips_backbone_weights={alexnet}"] if alexnet else ["eval.lpips=false"]
    config = compose_config("evaluate", [f"ckpt={ckpt}", f"out={out}", f"device={device}", f"scales={listed(scales)}",
                                         f"data.val_scales={listed(sorted({1.0, *knots, *scales}))}", *lpips,
                                         *budget_overrides(budget)["evaluate"]])
    config.pop("threads", None)     # the quick start set them once for all its steps
    return run(config, out)


def quickstart(out: str | Path, ckpt: str | Path = "demo", train: bool = False, budget: str = "demo",
               scales: Sequence[float] = (1.5, 2.5, 3, 4), photos: Sequence[str] = ("chelsea.png", "motorcycle_right.png"),
               device: str = "auto", seed: int = 0, lpips_backbone_weights: str | Path | None = None) -> dict[str, Path]:
    """Run the whole demo (module docstring) into ``out``; returns ``{what: path}`` and prints it."""
    from degflow.core.scales import expand_scales
    from degflow.data.images import write_image
    from degflow.infra.checkpoint import resolve_checkpoint
    from degflow.infra.files import atomic_write_json, atomic_write_text
    from degflow.jobs.degradation_profile import profile_table
    from degflow.metrics.perceptual import lpips_weights_hint

    out = Path(out)
    scales = expand_scales(list(scales), "scales")
    demo_photos(photos)
    weights = lpips_weights_folder(lpips_backbone_weights)
    check_quickstart(out, str(ckpt), train, budget, device, seed, weights)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if train:
        ckpt = train_demo_model(out, budget, device, seed, weights)
    dataset = synthesize_photos(ckpt, out, photos, scales, device)
    strip = out / "strip.png"
    write_image(strip, scale_figure(ckpt, scales, device, seed=seed))
    profile = profile_model(ckpt, scales, device, seed)
    table = profile_table(profile)
    atomic_write_json(out / "degradation.json", profile)
    atomic_write_text(out / "degradation.md", "# How the degradation grows with the scale (demo test photos)\n\n"
                      + table + "\n")
    if weights["alex"] is None:
        say(log, "note: the evaluation has no LPIPS column (no AlexNet backbone weights on disk); to add it, "
                 + lpips_weights_hint("alex", "lpips_backbone_weights"))
    evaluation = evaluate_model(ckpt, out / "evaluation", scales, "tiny" if budget == "tiny" and train else "demo",
                                device, weights["alex"])
    paths = {
        "model": resolve_checkpoint(ckpt),
        "LR dataset": dataset,
        "real vs generated": strip,
        "degradation": out / "degradation.md",
        "metrics table": Path(evaluation["paths"]["markdown"]),
        "metric vs scale": out / "evaluation" / "metric_vs_scale.png",
    }
    if train:
        paths = {"stage-1 run": out / "rae", "stage-2 run": out / "lfm",
                 "loss curves": out / "lfm" / "loss_curve.png", **paths}
    lines = ["How the degradation grows with the scale on the two test photos (detail: share of the HR photo's "
             "fine detail the LR keeps, lower = blurrier; noise: Immerkaer sigma at LR size, 8-bit):", table, "",
             f"quickstart finished in {time.perf_counter() - started:.0f} s. Everything is in {out}/"]
    lines += [f"  {k + ':':19s}{v}" for k, v in paths.items()]
    lines.append(f"  next: python synthesize.py ckpt={ckpt} input=<your HR folder> out=<dataset folder>")
    say(log, "\n".join(lines))
    return paths


def main(cfg: DictConfig) -> None:
    from degflow.infra.cluster import set_threads

    c = to_plain(cfg)
    set_threads(c["threads"])
    quickstart(HydraConfig.get().runtime.output_dir, c["ckpt"], c["train"], c["budget"], c["scales"], c["photos"],
               c["device"], c["seed"], c["lpips_backbone_weights"])


def cli() -> None:
    run_cli(main, "quickstart")


if __name__ == "__main__":
    cli()
