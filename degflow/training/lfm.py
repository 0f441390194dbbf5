"""Stage 2: latent flow matching (LFM) with the RAE frozen.

Per step: take the knot latents of the aligned training-scale images (HR, x2, x4 by default;
held-out scales are never loaded) from the latent cache (``stage.latent_cache=true``, see
:mod:`degflow.training.latent_cache`; only the HR crop's skip features are computed) or encode
them under no_grad (``false``), draw t ~ U(0, 1) per sample, evaluate the path (natural cubic
spline or piecewise-linear) through the knot latents, regress the velocity network onto the
path derivative, and add lambda * LPIPS on the decoded Taylor extrapolation to the segment's
right knot (see :mod:`degflow.core.losses`). With ``stage.ema_decay`` an exponential moving average
of the velocity weights follows the training (:mod:`degflow.training.ema`); it is saved in the
checkpoint (``models.velocity_ema``) and is what validation and synthesis use. Validation
generates every validation scale from the HR latent with the configured solver through
:class:`degflow.generation.Synthesizer`, and the ``ae_interp`` oracle through the same object.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from degflow.core.losses import LossSettings, flow_matching_loss, sample_times, segment_weights, taylor_extrapolate
from degflow.core.resize import bicubic_baseline, check_hr_size_output, lr_at_hr_size, upsample_to
from degflow.core.scales import scale_key
from degflow.core.solvers import SolverSpec
from degflow.core.spline import PATH_KINDS, evaluate_path
from degflow.core.timemap import TimeMap, build_time_map
from degflow.generation import Synthesizer, condition_kind, velocity_condition
from degflow.infra.checkpoint import CheckpointError, find_latest_checkpoint, load_checkpoint
from degflow.infra.conf import instantiate
from degflow.metrics.image import EVAL_PROTOCOLS, EvalProtocol, eval_protocol
from degflow.metrics.perceptual import load_lpips
from degflow.models.registry import build_model, model_entry
from degflow.training.accel import accelerate, held_for_precision
from degflow.training.ema import check_ema_decay, ema_decay_at, ema_update_
from degflow.training.latent_cache import LatentCache, load_or_build_latent_cache, place_latent_cache
from degflow.training.loop import Stage
from degflow.training.validation import ScaleAverages, validation_items
from degflow.viz.strips import labelled_strip

log = logging.getLogger(__name__)


#: With ``spline.learn_knots``, where a held-out scale (between training knots) sits in time:
#: ``fixed`` at its configured time (the authors' code), ``follow`` interpolated between the
#: learned neighbouring knots.
HELDOUT_TIMES = ("fixed", "follow")


def learned_time_map(train_scales: tuple[float, ...], learned_times: tuple[float, ...], base: TimeMap,
                     heldout_scales: tuple[float, ...], heldout_times: str) -> TimeMap:
    """The time map through learned knot times (``spline.heldout_times``).

    ``follow``: anchors at the training scales only, so every other scale is interpolated
    between the learned knots. ``fixed``: the held-out scales inside the training range keep
    their time under the configured map ``base`` (extra anchors), as in the authors' code.
    Raises ValueError when a learned knot has crossed a fixed held-out time.
    """
    if heldout_times == "follow":
        return TimeMap.from_times(train_scales, learned_times)
    extra = [s for s in heldout_scales if train_scales[0] < s < train_scales[-1] and s not in train_scales]
    anchors = sorted([*zip(train_scales, learned_times), *((s, base.scale_to_time(s)) for s in extra)])
    try:
        return TimeMap(tuple(a for a, _ in anchors), tuple(t for _, t in anchors))
    except ValueError:
        raise ValueError(
            f"spline.heldout_times=fixed: the learned knot times {dict(zip(train_scales, learned_times))} have "
            f"crossed the fixed times of the held-out scales {dict((s, base.scale_to_time(s)) for s in extra)}; "
            "use spline.heldout_times=follow, or keep the knots frozen (spline.learn_knots=false)") from None


@dataclass(frozen=True)
class SplineSettings:
    """Config node ``spline``: the path through the knot latents and where the knots sit in time."""

    path: str = "cubic"
    knots: str = "nominal"
    effective_scales: dict | None = None
    knot_times: list | None = None
    learn_knots: bool = False
    heldout_times: str = "fixed"

    def __post_init__(self) -> None:
        if self.path not in PATH_KINDS:
            raise ValueError(f"spline.path={self.path!r} is not one of {list(PATH_KINDS)}")
        if self.heldout_times not in HELDOUT_TIMES:
            raise ValueError(f"spline.heldout_times={self.heldout_times!r} is not one of {list(HELDOUT_TIMES)} "
                             "(fixed: held-out scales keep their configured times, as in the authors' code; "
                             "follow: they move with the learned neighbouring knots)")

    def time_map(self, train_scales: tuple[float, ...]) -> TimeMap:
        effective = None
        if self.effective_scales is not None:
            effective = {float(k): float(v) for k, v in self.effective_scales.items()}
            effective.setdefault(1.0, 1.0)
        return build_time_map(self.knots, train_scales, effective, self.knot_times)


class KnotTimes(torch.nn.Module):
    """Knot times ``[K]`` with the end knots fixed and, optionally, learnable interior knots.

    Interior times are parametrised by softmax gaps, so they stay strictly increasing and
    inside (t_0, t_{K-1}) whatever the optimiser does.
    """

    def __init__(self, times: tuple[float, ...], learnable: bool):
        super().__init__()
        t = torch.tensor(times, dtype=torch.float64)
        self.register_buffer("start", t[:1].float())
        self.register_buffer("span", (t[-1:] - t[:1]).float())
        gaps = torch.log(torch.diff(t) / (t[-1] - t[0])).float()              # [K-1]
        self.gap_logits = torch.nn.Parameter(gaps, requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        """Knot times ``[K]``."""
        gaps = torch.softmax(self.gap_logits, 0) * self.span                  # [K-1]
        interior = self.start + torch.cumsum(gaps[:-1], 0)                    # [K-2]
        # the end knot is fixed: written exactly, not as a float32 sum of gaps (which can
        # land a hair above it, outside the velocity net's t domain)
        return torch.cat([self.start, interior, self.start + self.span])


def resolve_rae_checkpoint(rae_ckpt: str | None, output_root: str | Path) -> Path:
    """The stage-1 checkpoint to use: ``rae_ckpt`` if given, else the newest finished RAE run
    under ``output_root`` (see :func:`degflow.infra.checkpoint.find_latest_checkpoint`)."""
    if rae_ckpt:
        return Path(rae_ckpt)
    found = find_latest_checkpoint(output_root, "rae", key="rae_ckpt")
    if found is None:
        raise CheckpointError(
            f"rae_ckpt is not set and no stage-1 run was found under output_root={str(output_root)!r}; "
            "train one first (`python train.py stage=rae`) or pass rae_ckpt=path/to/checkpoints/last.pt"
        )
    return found


class LFMStage(Stage):
    """Stage-2 hooks for :func:`degflow.training.loop.fit`."""

    kind = "lfm"

    def __init__(self, rae: torch.nn.Module, velocity: torch.nn.Module, train_scales: tuple[float, ...],
                 spline: SplineSettings, loss: LossSettings, solver: SolverSpec, val_set,
                 val_scales: tuple[float, ...], device: torch.device, rae_source: dict[str, Any],
                 lpips_loss: torch.nn.Module | None, lpips_metric: torch.nn.Module | None,
                 max_val_images: int | None = None, strip_images: int = 1, precision: str = "fp32",
                 protocol: EvalProtocol = EVAL_PROTOCOLS["ours"],
                 latent_cache: LatentCache | None = None, ema_decay: float | None = None,
                 hr_size_output: str = "decoded", kernel: Any = None):
        self.train_scales = tuple(float(s) for s in train_scales)
        if len(self.train_scales) < 2 or self.train_scales[0] != 1.0:
            raise ValueError(f"data.train_scales must start with 1 (the HR knot) and have at least two knots, "
                             f"got {list(train_scales)}")
        self.rae = rae.to(device).eval().requires_grad_(False)
        self.velocity = velocity.to(device)
        self.ema_decay = check_ema_decay(ema_decay)
        # what v is conditioned on (degflow.generation.condition; ValueError naming model.lfm.cond_channels)
        self.condition = condition_kind(int(getattr(velocity, "cond_channels", 0)),
                                        int(rae.config.get("latent_channels", velocity.config["in_channels"])),
                                        int(rae.stride))
        # the EMA copy never trains (no grad, eval mode); it starts at the initial weights
        self.ema = (copy.deepcopy(self.velocity).requires_grad_(False).eval()
                    if self.ema_decay is not None else None)
        self.spline, self.loss_settings, self.solver = spline, loss, solver
        self.base_time_map = spline.time_map(self.train_scales)
        self.knots = KnotTimes(self.base_time_map.knot_times(self.train_scales), spline.learn_knots).to(device)
        self.val_set, self.val_scales = val_set, tuple(float(s) for s in val_scales)
        self.kernel = kernel           # eval.kernel_baseline: the fitted kernel baseline, scored beside bicubic
        self.device, self.precision = device, precision
        self.rae_source = rae_source
        # the frozen networks of the step, held once in the compute dtype (fp32: the same objects);
        # self.rae keeps fp32 weights for checkpoints and validation
        self.rae_step = held_for_precision(self.rae, precision)
        self.lpips_loss = None if lpips_loss is None else held_for_precision(lpips_loss, precision)
        self.lpips_metric = lpips_metric
        self.max_val_images, self.strip_images = max_val_images, strip_images
        self.latent_cache = latent_cache   # knot latents of the training images (stage.latent_cache)
        self.protocol = protocol
        # how the model's LR is scored at validation (ValueError naming the key for another value)
        self.hr_size_output = check_hr_size_output(hr_size_output, "eval.hr_size_output")

    # -- the time map as trained so far (learned interior knots included) --------------------
    def time_map(self) -> TimeMap:
        """The configured map, or (``spline.learn_knots``) the map through the learned knot times,
        with held-out scales placed as ``spline.heldout_times`` says."""
        if not self.spline.learn_knots:
            return self.base_time_map
        learned = tuple(float(t) for t in self.knots().detach().cpu())
        heldout = tuple(s for s in self.val_scales if s not in self.train_scales)
        return learned_time_map(self.train_scales, learned, self.base_time_map, heldout, self.spline.heldout_times)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        params = list(self.velocity.parameters())
        if self.spline.learn_knots:
            params.append(self.knots.gap_logits)
        return params

    def train_modules(self) -> list[torch.nn.Module]:
        return [self.velocity]

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The frozen networks (RAE encoder and decoder, the step's copies when they differ,
        the LPIPS loss), for the throughput switches of :func:`~degflow.training.accel.accelerate`."""
        raes = [self.rae] + ([self.rae_step] if self.rae_step is not self.rae else [])
        return [part for rae in raes for part in (rae.encoder, rae.decoder)] + (
            [self.lpips_loss] if self.lpips_loss is not None else [])

    @torch.no_grad()
    def encode_knots(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Latents of the knot images and the HR skip features.

        Args:
            images: ``[B, K, 3, H, W]``, index 0 = the HR image.
        Returns:
            knots ``[B, K, C, h, w]`` and the HR skip features (list of ``[B, ...]``).
        """
        b, k = images.shape[:2]
        z, feats = self.rae_step.encode(images.flatten(0, 1))                 # [B*K,C,h,w]
        hr_feats = [f.view(b, k, *f.shape[1:])[:, 0] for f in feats]
        return z.view(b, k, *z.shape[1:]).float(), hr_feats

    def training_set(self, dataset):
        """With the latent cache, crops on the RAE's stride grid (the cache's latent pixels)."""
        if self.latent_cache is None:
            return dataset
        return aligned_training_set(dataset, self.latent_cache.stride)

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        hr, lr = batch["hr"], batch["lr"]                                    # [B,3,H,W], [B,K-1,3,H,W]
        images = torch.cat([hr[:, None], lr], dim=1)                         # [B,K,3,H,W]
        if self.latent_cache is None:
            knots, hr_feats = self.encode_knots(images)
        else:  # knots from the cache; the decoder still needs this crop's HR skip features
            knots = self.latent_cache.crops(batch["where"], hr.shape[-1]).to(hr.device)   # [B,K,C,h,w]
            with torch.no_grad():
                hr_feats = self.rae_step.features(hr) if self.loss_settings.lpips_weight > 0 else None
        knot_times = self.knots()                                            # [K]
        b = hr.shape[0]
        u = batch["draws"].rand(b, hr.device)                                # [B] (data parallel: see RowDraws)
        t = sample_times(u, knot_times.detach(), self.loss_settings.time_sampling,
                         self.loss_settings.knot_concentration)              # [B]
        point = evaluate_path(self.spline.path, knot_times, knots, t)
        cond = velocity_condition(self.condition, knots[:, 0], hr, int(self.rae.stride))   # None | z_0 | z_0 + HR
        v = self.velocity(point.value, t, *(() if cond is None else (cond,)))   # [B,C,h,w]
        fm = flow_matching_loss(v, point.d1)                                 # [B]
        loss = fm.mean()
        scalars = {"fm": float(loss.detach())}
        if self.loss_settings.lpips_weight > 0:
            dt = point.right_time - t                                        # [B]
            z_hat = taylor_extrapolate(point, v.float(), dt, self.loss_settings.taylor_order)
            x_hat = self.rae_step.decode(z_hat, hr_feats)                    # [B,3,H,W]
            target = images[torch.arange(b, device=hr.device), point.segment + 1]
            perceptual = self.lpips_loss(x_hat.float(), target.float())      # [B]
            segment_length = point.right_time - knot_times[point.segment]    # [B]
            weights = segment_weights(dt, segment_length, self.loss_settings.segment_weighting)
            weighted = (weights * perceptual).mean()
            loss = loss + self.loss_settings.lpips_weight * weighted
            scalars["lpips"] = float(perceptual.detach().mean())
        if self.spline.learn_knots:
            scalars.update({f"knot_t{i}": float(v) for i, v in enumerate(knot_times.detach())})
        return loss, scalars

    def after_step(self, updates: int) -> None:
        if self.ema is not None:
            ema_update_(self.ema, self.velocity, ema_decay_at(updates, self.ema_decay))

    def synthesizer(self) -> Synthesizer:
        """The generation core on the networks validation measures: the EMA velocity weights
        when ``stage.ema_decay`` is set, else the live ones."""
        return Synthesizer(self.rae, self.ema if self.ema is not None else self.velocity, self.time_map(), self.solver, self.device, self.precision,
                           max_trained_scale=self.train_scales[-1], train_scales=self.train_scales,
                           spline_path=self.spline.path)

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        synth = self.synthesizer()
        allow = max(self.val_scales) > self.train_scales[-1]
        names = ("psnr_y", "ssim_y", "psnr_y_bicubic", "psnr_y_ae_interp") + (("lpips",) if self.lpips_metric else ()) \
            + (("psnr_y_kernel",) if self.kernel is not None else ())
        averages = ScaleAverages(self.val_scales, names)
        nfe, seconds, strip_rows = 0, 0.0, []
        for item in validation_items(self.val_set, self.max_val_images, self.device, self.protocol, self.progress):
            hr = item["hr"]                                                  # [1,3,H,W]
            real = {1.0: hr, **{float(s): item["lr"][:, j] for j, s in enumerate(item["scales"][0].tolist())}}
            result = synth.generate(hr, self.val_scales, allow_extrapolation=allow)
            nfe, seconds = result.nfe, seconds + result.seconds
            # the ae_interp oracle: the path through the REAL encoded training-scale latents
            oracle = synth.interpolate_real(hr, {s: real[s] for s in self.train_scales[1:]}, self.val_scales,
                                            allow_extrapolation=allow)
            bicubic = {s: bicubic_baseline(hr, s) if s != 1.0 else hr for s in self.val_scales}
            generated, oracles = {}, {}
            for s in self.val_scales:
                generated[s] = lr_at_hr_size(result.images[s], s, self.hr_size_output, key="eval.hr_size_output")
                oracles[s] = lr_at_hr_size(oracle.images[s], s, self.hr_size_output, key="eval.hr_size_output")
                fake, target = generated[s], real[s]
                averages.add(s, psnr_y=self.protocol.psnr_y(fake, target).mean(),
                             ssim_y=self.protocol.ssim_y(fake, target).mean(),
                             psnr_y_ae_interp=self.protocol.psnr_y(oracles[s], target).mean())
                if s != 1.0:                     # at x1 the "baseline" is the HR image itself
                    averages.add(s, psnr_y_bicubic=self.protocol.psnr_y(bicubic[s], target).mean())
                    if self.kernel is not None:  # its true-size LR upsampled, like bicubic's
                        kernel_lr = upsample_to(self.kernel.degrade(hr, s), *hr.shape[-2:])
                        averages.add(s, psnr_y_kernel=self.protocol.psnr_y(kernel_lr, target).mean())
                if self.lpips_metric is not None:
                    averages.add(s, lpips=self.lpips_metric(fake, target).mean())
            if averages.images < self.strip_images:
                strip_rows.append({"real": [real[s][0] for s in self.val_scales],
                                   "generated": [generated[s][0] for s in self.val_scales],
                                   "bicubic": [bicubic[s][0] for s in self.val_scales]})
            averages.image_done()
        scales = averages.table(self.train_scales)
        count = averages.images
        for s in self.val_scales:
            scales[scale_key(s)]["t"] = float(synth.time_map.scale_to_time(s))
        heldout = [r for r in scales.values() if r["heldout"]] or list(scales.values())
        objective = sum(r["psnr_y"] for r in heldout) / len(heldout)
        summary = " ".join(
            f"{scale_key(s)}{'*' if scales[scale_key(s)]['heldout'] else ''}:{scales[scale_key(s)]['psnr_y']:.2f}"
            f"(bic {scales[scale_key(s)]['psnr_y_bicubic']:.2f})" for s in self.val_scales if s != 1.0
        )
        columns = [f"{scale_key(s)}{'*' if scales[scale_key(s)]['heldout'] else ''}\n"
                   f"t={scales[scale_key(s)]['t']:.2f}" for s in self.val_scales]
        caption = ("rows: real LR, generated from HR only, bicubic (HR down and back up); columns: scale "
                   "and trajectory time t (* held out)")
        images = {f"val/strip{i}": (labelled_strip(rows, columns, title=f"{self.kind} step {step}: * held-out scale"),
                                    caption)
                  for i, rows in enumerate(strip_rows)}
        return {
            "scales": scales, "objective": objective,
            "objective_name": "mean Y-PSNR over held-out scales on the validation split",
            "protocol": self.protocol.to_dict(), "hr_size_output": self.hr_size_output,
            "nfe": nfe, "seconds_per_image": seconds / count, "images_evaluated": count,
            "solver": asdict(self.solver), "knot_times": list(synth.time_map.knot_times(self.train_scales)),
            "summary": f"gen Y-PSNR {summary} (*held out) | NFE {nfe} | {seconds / count:.2f}s/img",
            "images": images,
        }

    def check_same_rae(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume a run whose frozen RAE differs from the one ``rae_ckpt`` resolves to now.

        A resumed run keeps training its velocity network on the RAE it started with, so a
        different RAE (another ``rae_ckpt``, or a newer / retrained latest RAE run) would mix
        two sources and record the wrong one. Raises :class:`~degflow.infra.checkpoint.CheckpointError`
        naming ``rae_ckpt``, both sources and the ways forward.
        """
        stored = ckpt["models"]["rae"]["state_dict"]
        current = {k: v.detach().cpu() for k, v in self.rae.state_dict().items()}
        if stored.keys() == current.keys() and all(
                stored[k].shape == v.shape and torch.equal(stored[k].cpu(), v) for k, v in current.items()):
            return
        recorded = ckpt.get("extra", {}).get("rae_source") or {}

        def source(info: dict[str, Any]) -> str:
            sha = str(info.get("sha256") or "unknown")[:12]
            return f"{info.get('path', 'unknown')!r} (sha256 {sha}..., step {info.get('step', 'unknown')})"

        raise CheckpointError(
            f"rae_ckpt: this run was trained on the frozen RAE {source(recorded)}, but rae_ckpt now resolves to "
            f"{source(self.rae_source)}, whose weights differ; resuming would continue the velocity network "
            f"on another RAE. To continue the run, pass rae_ckpt= the original RAE checkpoint (unchanged); to "
            f"train on the new RAE, start a fresh run: resume=false (replaces this run's checkpoints) or a new "
            f"output folder (output_root=... with rae_ckpt=...)"
        )

    def state(self) -> dict[str, Any]:
        return {
            "models": {"rae": model_entry(self.rae), "velocity": model_entry(self.velocity),
                       **({"velocity_ema": model_entry(self.ema)} if self.ema is not None else {})},
            "train_scales": list(self.train_scales),
            "time_map": self.time_map().to_dict(),
            "knot_state": {k: v.detach().cpu() for k, v in self.knots.state_dict().items()},
            "extra": {"spline": asdict(self.spline), "loss": asdict(self.loss_settings),
                      "solver": self.solver.to_dict(),
                      "rae_source": self.rae_source, "val_scales": list(self.val_scales)},
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.check_same_rae(ckpt)
        self.rae.load_state_dict(ckpt["models"]["rae"]["state_dict"])
        self.velocity.load_state_dict(ckpt["models"]["velocity"]["state_dict"])
        if self.ema is not None:  # a run that had no EMA yet starts it at its current weights
            source = ckpt["models"].get("velocity_ema", ckpt["models"]["velocity"])
            self.ema.load_state_dict(source["state_dict"])
        self.knots.load_state_dict(ckpt["knot_state"])


def aligned_training_set(dataset, stride: int):
    """A copy of a training-crop dataset whose crop corners lie on the ``stride`` grid."""
    if not hasattr(dataset, "crop_align") or not hasattr(dataset, "records"):
        raise ValueError(f"stage.latent_cache=true needs a training set of aligned random crops "
                         f"(degflow.data.common.TrainCropDataset), got {type(dataset).__name__}; "
                         f"set stage.latent_cache=false")
    if dataset.crop_size % stride:
        raise ValueError(f"stage.latent_cache=true needs data.crop_size to be a multiple of the RAE stride "
                         f"{stride}, got {dataset.crop_size}")
    aligned = copy.copy(dataset)
    aligned.crop_align = stride
    return aligned


def build_lfm_stage(config: dict[str, Any], data, device: torch.device) -> LFMStage:
    """Wire stage 2 from a plain config: frozen RAE from its checkpoint, velocity net, losses, solver."""
    spline = SplineSettings(**config["spline"])
    loss = LossSettings(**config["loss"])
    solver = SolverSpec.create(**config["solver"])
    rae_path = resolve_rae_checkpoint(config["rae_ckpt"], config["output_root"])
    rae_ckpt, rae_digest = load_checkpoint(rae_path, kind="rae", key="rae_ckpt", with_digest=True)
    rae = build_model(rae_ckpt["models"]["rae"])
    if [float(s) for s in rae_ckpt["train_scales"]] != [float(s) for s in data.train_scales]:
        log.warning("the RAE was trained on scales %s, the LFM trains on %s", rae_ckpt["train_scales"],
                    list(data.train_scales))
    rae_sha256 = rae_digest.sha256   # verified by the load: the file's checkpoint_sha256
    cache = None
    if config["stage"]["latent_cache"]:
        if rae.config.get("norm") != "layer":
            log.warning("stage.latent_cache with an RAE using norm=%r: its encoder is not local, so cached "
                        "latents differ from the latents of crops more than with norm=layer", rae.config.get("norm"))
        aligned_training_set(data.train, rae.stride)        # refuse a bad crop size before encoding
        cache = load_or_build_latent_cache(rae.to(device), data.train.records, data.train.scales, rae_sha256,
                                           device, config["stage"]["latent_cache_dir"])
        cache = place_latent_cache(cache, device)
    velocity = accelerate(instantiate(config["model"]["lfm"]), config["channels_last"], config["compile"])
    lpips_loss = lpips_metric = None
    if loss.lpips_weight > 0:
        lpips_loss = load_lpips(loss.lpips_net, loss.lpips_backbone_weights, device=device, pooling=loss.lpips_pooling)
    if config["eval"]["lpips"]:
        lpips_metric = load_lpips("alex", config["eval"]["lpips_backbone_weights"], device=device)
    stage = LFMStage(
        rae, velocity, data.train_scales, spline, loss, solver, data.val, data.val_scales, device,
        rae_source={"path": str(rae_path), "sha256": rae_sha256, "step": int(rae_ckpt["step"])},
        lpips_loss=lpips_loss, lpips_metric=lpips_metric, max_val_images=config["eval"]["max_images"],
        strip_images=config["eval"]["strip_images"], precision=config["precision"],
        protocol=eval_protocol(config["eval"]["protocol"]), latent_cache=cache,
        ema_decay=config["stage"].get("ema_decay"), hr_size_output=config["eval"]["hr_size_output"],
        kernel=_kernel_baseline(config, data),
    )
    for module in stage.frozen_modules():  # after the stage holds its compute copies
        accelerate(module, config["channels_last"], config["compile"])
    return stage


def _kernel_baseline(config: dict[str, Any], data):
    """``eval.kernel_baseline``: the kernel baseline fitted on the training pairs (cached under
    ``<output_root>/kernel_cache``), or None."""
    if not config["eval"].get("kernel_baseline"):
        return None
    from degflow.data.kernel_fit import bundle_pairs, kernel_baseline

    return kernel_baseline(bundle_pairs(data), data.description, cache_dir=Path(config["output_root"]) / "kernel_cache")
