"""Stage 1: train the residual autoencoder (RAE) on images of the training scales.

Per sample, one image is drawn uniformly from the training scales (1 = the HR image itself),
encoded, and decoded with the skip features of the HR image; the loss is the MSE to that
image. Validation reports the Y-PSNR of reconstructions at every validation scale (held-out
ones included) next to the trivial baseline of copying the HR image.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from degflow.core.scales import scale_key
from degflow.core.timemap import TimeMap
from degflow.metrics.image import EVAL_PROTOCOLS, EvalProtocol
from degflow.models.registry import model_entry
from degflow.training.loop import Stage
from degflow.training.validation import ScaleAverages, validation_items
from degflow.viz.strips import labelled_strip


class RAEStage(Stage):
    """Stage-1 hooks for :func:`degflow.training.loop.fit`."""

    kind = "rae"

    def __init__(self, rae: torch.nn.Module, train_scales: tuple[float, ...], val_set,
                 val_scales: tuple[float, ...], device: torch.device, data_description: str = "",
                 max_val_images: int | None = None, strip_images: int = 1,
                 protocol: EvalProtocol = EVAL_PROTOCOLS["ours"]):
        if not train_scales or float(train_scales[0]) != 1.0:
            raise ValueError(f"data.train_scales must start with 1 (the HR knot), got {list(train_scales)}")
        self.rae = rae.to(device)
        self.train_scales = tuple(float(s) for s in train_scales)
        self.val_set = val_set
        self.val_scales = tuple(float(s) for s in val_scales)
        self.device = device
        self.data_description = data_description
        self.max_val_images = max_val_images
        self.strip_images = strip_images
        self.protocol = protocol

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.rae.parameters())

    def train_modules(self) -> list[torch.nn.Module]:
        return [self.rae]

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        hr, lr = batch["hr"], batch["lr"]                                # [B,3,h,w], [B,S,3,h,w]
        images = torch.cat([hr[:, None], lr], dim=1)                     # [B,S+1,3,h,w]; index 0 = scale 1
        pick = batch["draws"].randint(images.shape[1], hr.shape[0], hr.device)   # [B] (data parallel: see RowDraws)
        target = images[torch.arange(hr.shape[0], device=hr.device), pick]   # [B,3,h,w]
        _, hr_feats = self.rae.encode(hr)
        z, _ = self.rae.encode(target)
        recon = self.rae.decode(z, hr_feats)
        loss = F.mse_loss(recon.float(), target.float())
        return loss, {"mse": float(loss.detach())}

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, Any]:
        averages = ScaleAverages(self.val_scales, ("psnr_y", "psnr_y_copy_hr"))
        strip_rows = []
        for item in validation_items(self.val_set, self.max_val_images, self.device, self.protocol,
                                     self.progress):
            hr = item["hr"]                                              # [1,3,H,W]
            targets = {1.0: hr, **{float(s): item["lr"][:, j] for j, s in enumerate(item["scales"][0].tolist())}}
            _, hr_feats = self.rae.encode(hr)
            recons = {}
            for s in self.val_scales:
                target = targets[s]
                recon = self.rae.decode(self.rae.encode(target)[0], hr_feats).clamp(-1, 1)
                recons[s] = recon
                averages.add(s, psnr_y=self.protocol.psnr_y(recon, target).mean())
                if s != 1.0:  # the trivial baseline: predict the HR image itself
                    averages.add(s, psnr_y_copy_hr=self.protocol.psnr_y(hr, target).mean())
            if averages.images < self.strip_images:
                strip_rows.append(([targets[s][0] for s in self.val_scales], [recons[s][0] for s in self.val_scales]))
            averages.image_done()
        scales = averages.table(self.train_scales)
        count = averages.images
        summary = " ".join(
            f"{scale_key(s)}{'*' if s not in self.train_scales else ''}:{scales[scale_key(s)]['psnr_y']:.2f}dB"
            + ("" if s == 1.0 else f"(copy-HR {scales[scale_key(s)]['psnr_y_copy_hr']:.2f})")
            for s in self.val_scales
        )
        columns = [f"{scale_key(s)}{'*' if s not in self.train_scales else ''}" for s in self.val_scales]
        images = {}
        for i, (real, recon) in enumerate(strip_rows):
            images[f"val/strip{i}"] = (labelled_strip({"real": real, "RAE reconstruction": recon}, columns,
                                                      title=f"{self.kind} step {step}: * held-out scale"),
                                       "rows: real image per scale, its RAE reconstruction (HR skips); * held out")
        return {"scales": scales, "images_evaluated": count, "protocol": self.protocol.to_dict(), "summary": "recon Y-PSNR " + summary + " (*held out)",
                "images": images}

    def state(self) -> dict[str, Any]:
        return {
            "models": {"rae": model_entry(self.rae)},
            "train_scales": list(self.train_scales),
            "time_map": TimeMap.nominal(self.train_scales).to_dict(),
            "extra": {"data": self.data_description, "val_scales": list(self.val_scales)},
        }

    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.rae.load_state_dict(ckpt["models"]["rae"]["state_dict"])
