"""Stage 2's knot latents, computed once by the frozen encoder and reused at every step.

In stage 2 the RAE is frozen, so the latent of a training image never changes. For every
training record and each of the 8 dihedral transforms ``k`` (the training augmentation),
the cache holds ``E(T_k(x))`` for every knot image ``x`` (the HR image and the training LR
scales), where ``x`` is the record's image cut to its top-left part whose sides are
multiples of the RAE stride (8). A training crop whose corner lies on the stride grid
(:class:`degflow.data.common.TrainCropDataset` with ``crop_align = 8``, in the frame of the
transformed image, its ``where`` field) then finds its knot latents at
``latents[record][k][:, :, top/8 : top/8 + size/8, left/8 : left/8 + size/8]``.

How exact: the encoder is convolutional with a per-pixel LayerNorm (``norm="layer"``, the
paper's), so the crop of the full image's latent equals the latent of the crop except
within the encoder's receptive field of the crop border, where the crop's own encoding
sees zero padding instead of the neighbouring pixels (measured by
``experiments/studies/latent_cache/latent_cache_error.py``; docs/BENCHMARKS.md quotes it). With
``norm="group"`` the encoder is not local (GroupNorm statistics cover the whole input) and the
difference is larger.

On a GPU the cache is held there when it fits (:func:`place_latent_cache`): one padded
table, and the crops of a batch are one gather on the device.

The cache is keyed by the RAE checkpoint's sha256 and a fingerprint of the training
images. With a ``cache_dir`` it is also stored on disk (``{fingerprint}-{rae}.pt``, atomic
write sealed with its digest, verified ``weights_only`` load) so a resumed or requeued job does
not encode again; files of the same images under another RAE are deleted when the RAE changes.
A damaged, unsealed or unreadable file is encoded again; a file that cannot be written (a full
disk) leaves training on the cache in memory.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from degflow.data.transforms import NUM_DIHEDRAL, dihedral
from degflow.infra.digests import describe_load_error, file_digest, save_sealed

log = logging.getLogger(__name__)

FORMAT = "degflow-latent-cache-1"


@dataclass
class LatentCache:
    """Knot latents of every training record under the 8 dihedral transforms.

    ``latents[i][k]``: ``[K, C, h, w]`` for record ``i`` and transform ``k`` (index 0 of K =
    the HR image), ``h, w`` = the aligned image size / ``stride`` (swapped for odd ``k``).
    """

    latents: list[list[torch.Tensor]]
    stride: int
    rae_sha256: str
    fingerprint: str
    #: ``[N, 8, K, C, S, S]`` on the device (:meth:`make_resident`), every latent zero-padded to
    #: the largest side S; None: crops are cut from :attr:`latents` one by one on the host
    table: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return sum(z.numel() * z.element_size() for rec in self.latents for z in rec)

    def table_nbytes(self) -> int:
        """Bytes of the padded device table :meth:`make_resident` would allocate."""
        first = self.latents[0][0]
        side = max(max(z.shape[-2:]) for rec in self.latents for z in rec)
        return len(self.latents) * NUM_DIHEDRAL * first.shape[0] * first.shape[1] * side * side * first.element_size()

    def make_resident(self, device: torch.device) -> "LatentCache":
        """Hold every latent in one padded table on ``device``: :meth:`crops` is then a single
        gather there (no host round trip, no per-crop copies); the crops are the same numbers."""
        first = self.latents[0][0]
        side = max(max(z.shape[-2:]) for rec in self.latents for z in rec)
        table = torch.zeros(len(self.latents), NUM_DIHEDRAL, *first.shape[:2], side, side, dtype=first.dtype,
                            device=device)
        for i, rec in enumerate(self.latents):
            for k, z in enumerate(rec):
                table[i, k, :, :, :z.shape[-2], :z.shape[-1]] = z.to(device)
        self.table = table
        return self

    def crops(self, where: torch.Tensor, size: int) -> torch.Tensor:
        """Knot latents of a batch of aligned crops.

        Args:
            where: ``[B, 4]`` per crop (record index, top, left, dihedral k); top/left in
                pixels of the transformed image, multiples of ``stride``.
            size: crop side in pixels (a multiple of ``stride``).
        Returns:
            ``[B, K, C, size/stride, size/stride]``.
        """
        n = size // self.stride
        if self.table is not None:
            return self._gather(where, n)
        out = []
        for i, top, left, k in where.tolist():
            if top % self.stride or left % self.stride or size % self.stride:
                raise ValueError(f"latent cache: crop at ({top}, {left}) of size {size} is not on the "
                                 f"stride-{self.stride} grid (the dataset needs crop_align={self.stride})")
            z = self.latents[i][k]
            out.append(z[:, :, top // self.stride:top // self.stride + n, left // self.stride:left // self.stride + n])
        return torch.stack(out)

    def _gather(self, where: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`crops` from the device table (the dataset puts every crop on the stride grid,
        inside the image: :func:`degflow.training.lfm.aligned_training_set`)."""
        where = where.to(self.table.device, non_blocking=True)
        i, top, left, k = where.unbind(1)                                        # [B] each
        steps = torch.arange(n, device=where.device)
        rows = (top // self.stride)[:, None] + steps                             # [B, n]
        cols = (left // self.stride)[:, None] + steps                            # [B, n]
        picked = self.table[i[:, None, None], k[:, None, None], :, :, rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 4, 1, 2).contiguous()                       # [B,n,n,K,C] -> [B,K,C,n,n]

    def to(self, device: torch.device) -> "LatentCache":
        self.latents = [[z.to(device) for z in rec] for rec in self.latents]
        return self


#: Share of the GPU's free memory the latent cache may take as a device-resident table.
RESIDENT_SHARE = 0.25


def place_latent_cache(cache: LatentCache, device: torch.device) -> LatentCache:
    """On a GPU, make the cache resident there (:meth:`LatentCache.make_resident`) when its
    padded table takes at most :data:`RESIDENT_SHARE` of the free device memory; otherwise (and
    on the CPU) the crops are cut on the host and copied at each step. Logs the choice."""
    if device.type != "cuda":
        return cache
    need = cache.table_nbytes()
    free, _ = torch.cuda.mem_get_info(device)
    if need > RESIDENT_SHARE * free:
        log.info("latent cache: %.1f MiB as a padded table is more than %d%% of the %.1f GiB free on %s; crops "
                 "are cut on the host at every step", need / 2**20, 100 * RESIDENT_SHARE, free / 2**30, device)
        return cache
    log.info("latent cache: resident on %s (%.1f MiB padded table)", device, need / 2**20)
    return cache.make_resident(device)


def aligned_knot_images(record, scales: Sequence[float], stride: int) -> torch.Tensor:
    """``[K, 3, H8, W8]``: the record's HR image and its LR images at ``scales`` (LR only,
    HR-sized), cut to the top-left part whose sides are multiples of ``stride``."""
    hr, lr = record.load(scales)
    images = torch.cat([hr[None], lr]) if len(scales) else hr[None]
    h, w = images.shape[-2:]
    return images[..., :h - h % stride, :w - w % stride].float()


def images_fingerprint(records: Sequence, scales: Sequence[float]) -> str:
    """Identity of a training set's pixels: file paths, sizes and modification times of
    on-disk records (``hr``/``lr`` paths, or a held-in-memory record's ``source``), the
    pixel bytes of in-memory ones, the record order and the scales."""
    digest = hashlib.sha256(repr([float(s) for s in scales]).encode())
    for rec in records:
        digest.update(rec.name.encode())
        paths = getattr(rec, "source", None)
        if paths is None and hasattr(rec, "hr") and isinstance(rec.hr, Path):
            paths = [rec.hr, *(rec.lr[s] for s in scales)]
        if paths is not None:
            for p in paths:
                st = Path(p).stat()
                digest.update(f"{Path(p).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            hr, lr = rec.load(scales)
            for x in (hr, lr):
                digest.update(repr(tuple(x.shape)).encode())
                digest.update(x.contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_records(rae: torch.nn.Module, records: Sequence, scales: Sequence[float],
                   device: torch.device) -> list[list[torch.Tensor]]:
    """``E(T_k(x))`` for every record, transform ``k`` and knot image ``x``, one image per
    encoder call (bounded memory), in fp32, stored on the CPU."""
    was_training = rae.training
    rae.eval()
    out = []
    for rec in records:
        images = aligned_knot_images(rec, scales, rae.stride).to(device)       # [K,3,H8,W8]
        out.append([torch.cat([rae.encode(dihedral(x, k)[None])[0] for x in images]).float().cpu()
                    for k in range(NUM_DIHEDRAL)])
    rae.train(was_training)
    return out


def load_or_build_latent_cache(rae: torch.nn.Module, records: Sequence, scales: Sequence[float],
                               rae_sha256: str, device: torch.device,
                               cache_dir: str | Path | None = None) -> LatentCache:
    """The latent cache of ``records`` under ``rae``: read from ``cache_dir`` when a file for
    the same images and the same RAE sha256 exists, else encoded now (and written there).

    Args:
        rae: the frozen RAE (``stride`` attribute, ``encode``).
        records: training records (``name``, ``load(scales) -> (hr, lr)``).
        scales: the LR training scales (the HR knot is implied, index 0).
        rae_sha256: sha256 of the RAE checkpoint file the weights came from.
        device: where to encode.
        cache_dir: optional folder for the on-disk copy (config ``stage.latent_cache_dir``).
    """
    fingerprint = images_fingerprint(records, scales)
    path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        path = cache_dir / f"{fingerprint[:16]}-{rae_sha256[:16]}.pt"
        if path.is_file():
            try:
                found = file_digest(path)
                if not (found.sealed and found.intact):
                    raise ValueError(found.problem or ("damaged: its content does not match its digest" if found.sealed
                                                       else "written without a digest"))
                payload = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # damaged, truncated or foreign: rebuild, never crash
                reason = str(err) if isinstance(err, ValueError) else describe_load_error(err)
                log.warning("latent cache %s cannot be used (%s); encoding again", path, reason)
            else:
                if (payload.get("format") == FORMAT and payload.get("rae_sha256") == rae_sha256
                        and payload.get("fingerprint") == fingerprint and payload.get("stride") == rae.stride):
                    cache = LatentCache(payload["latents"], rae.stride, rae_sha256, fingerprint)
                    log.info("latent cache: loaded %s (%.1f MiB)", path, cache.nbytes / 2**20)
                    return cache
                log.warning("latent cache %s does not match this RAE / these images; encoding again", path)
    t0 = time.perf_counter()
    latents = encode_records(rae, records, scales, device)
    cache = LatentCache(latents, rae.stride, rae_sha256, fingerprint)
    log.info("latent cache: encoded %d records x %d transforms x %d knots in %.1fs (%.1f MiB)",
             len(records), NUM_DIHEDRAL, len(scales) + 1, time.perf_counter() - t0, cache.nbytes / 2**20)
    if path is not None:
        for stale in cache_dir.glob(f"{fingerprint[:16]}-*.pt"):   # the same images under another RAE
            if stale != path:
                stale.unlink(missing_ok=True)
                log.info("latent cache: removed %s (written for another RAE checkpoint)", stale)
        payload = {"format": FORMAT, "rae_sha256": rae_sha256, "fingerprint": fingerprint,
                   "stride": rae.stride, "latents": latents}
        try:
            save_sealed(path, payload)
        except OSError as err:    # a full or read-only disk: the cache in memory serves this run
            log.warning("latent cache: could not write %s (%s); training goes on with the cache in memory",
                        path, err.strerror or err)
    return cache
