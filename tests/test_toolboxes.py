"""``synthesize.py layout=toolbox``: a dataset BasicSR's paired dataset and LIIF's paired folders read
unchanged, checked with minimal re-implementations of the two loaders' rules (written here from
their documented behaviour; none of their code is used or copied)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_synthesis import _image, _write_lfm_checkpoint

from degflow.core.resize import resize_to_lr
from degflow.core.solvers import SolverSpec
from degflow.generation import Synthesizer
from degflow.generation.degrade import quantize_8bit
from degflow.jobs.lr_dataset import META_INFO, toolbox_multiple, write_lr_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- BasicSR's rules
def _png_array(path: str) -> np.ndarray:
    """Image as HWC float32 in [0, 1] (BasicSR reads BGR with OpenCV; the channel order does not
    matter to the rules checked here)."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def basicsr_paired_paths(lq_folder: str, gt_folder: str, meta_info_file: str | None = None,
                         filename_tmpl: str = "{}") -> list[dict[str, str]]:
    """Path pairing of BasicSR's PairedImageDataset: from a meta information file (first
    space-separated token of each line = the GT file name) or from the two folders (non-hidden
    files of the top level only; same count; every GT stem through ``filename_tmpl`` names an LQ file)."""
    if meta_info_file is not None:
        with open(meta_info_file) as f:
            gt_names = [line.split(" ")[0] for line in f]
        out = []
        for gt in gt_names:
            stem, ext = os.path.splitext(os.path.basename(gt))
            out.append({"lq_path": os.path.join(lq_folder, filename_tmpl.format(stem) + ext),
                        "gt_path": os.path.join(gt_folder, gt)})
        return out
    lq = [e.name for e in os.scandir(lq_folder) if e.is_file() and not e.name.startswith(".")]
    gt = [e.name for e in os.scandir(gt_folder) if e.is_file() and not e.name.startswith(".")]
    if len(lq) != len(gt):
        raise AssertionError(f"lq and gt datasets have different numbers of images: {len(lq)}, {len(gt)}")
    out = []
    for name in gt:
        stem, ext = os.path.splitext(name)
        lq_name = filename_tmpl.format(stem) + ext
        if lq_name not in lq:
            raise AssertionError(f"{lq_name} is not in the lq folder")
        out.append({"lq_path": os.path.join(lq_folder, lq_name), "gt_path": os.path.join(gt_folder, name)})
    return out


def basicsr_item(pair: dict[str, str], scale: int, phase: str, gt_size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """One item: train = paired random crop (GT must be exactly LQ x scale, LQ at least
    gt_size // scale, GT corner = LQ corner x scale); otherwise the GT is cropped to LQ x scale."""
    gt, lq = _png_array(pair["gt_path"]), _png_array(pair["lq_path"])
    if phase == "train":
        (hg, wg), (hl, wl) = gt.shape[:2], lq.shape[:2]
        p = gt_size // scale
        if hg != hl * scale or wg != wl * scale:
            raise ValueError(f"Scale mismatches. GT ({hg}, {wg}) is not {scale}x multiplication of LQ ({hl}, {wl})")
        if hl < p or wl < p:
            raise ValueError(f"LQ ({hl}, {wl}) is smaller than patch size ({p}, {p})")
        top, left = random.randint(0, hl - p), random.randint(0, wl - p)
        return gt[top * scale:top * scale + gt_size, left * scale:left * scale + gt_size], lq[top:top + p, left:left + p]
    return gt[:lq.shape[0] * scale, :lq.shape[1] * scale], lq


# --------------------------------------------------------------------------- LIIF's rules
def liif_paired_folders(root_1: str, root_2: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """LIIF's paired-image-folders: every entry of each folder (os.listdir, sorted, nothing
    filtered), paired by position; each opened as an RGB image [3, H, W] in [0, 1]."""
    def folder(root: str) -> list[torch.Tensor]:
        return [torch.from_numpy(_png_array(os.path.join(root, n))).permute(2, 0, 1) for n in sorted(os.listdir(root))]
    first, second = folder(root_1), folder(root_2)
    return [(first[i], second[i]) for i in range(len(first))]


def liif_sr_implicit_paired(lr: torch.Tensor, hr: torch.Tensor, inp_size: int | None = None) -> tuple[torch.Tensor,
                                                                                                       torch.Tensor]:
    """LIIF's sr-implicit-paired wrapper: integer scale s = H // h; whole pair (HR cut to h s x w s)
    or a random LR crop of inp_size with the HR crop at its corner x s."""
    s = hr.shape[-2] // lr.shape[-2]
    if inp_size is None:
        h, w = lr.shape[-2:]
        return lr, hr[:, :h * s, :w * s]
    x0 = random.randint(0, lr.shape[-2] - inp_size)
    y0 = random.randint(0, lr.shape[-1] - inp_size)
    return (lr[:, x0:x0 + inp_size, y0:y0 + inp_size],
            hr[:, x0 * s:x0 * s + inp_size * s, y0 * s:y0 * s + inp_size * s])


# --------------------------------------------------------------------------- the export
@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toolbox")
    for i, (h, w) in enumerate([(37, 53), (40, 45), (49, 38)]):
        sub = root / "in" / ("sub" if i == 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(h, w, i)).save(sub / f"img{i}.png")
    ckpt = _write_lfm_checkpoint(root / "lfm.pt", SolverSpec.create("rk4", steps=2))
    synth = Synthesizer.from_checkpoint(ckpt, solver=SolverSpec.create("rk4", steps=2, output_mode="cubic"))
    summary = write_lr_dataset(synth, root / "in", root / "out", [2, 3], layout="toolbox", baselines=["bicubic"],
                               progress=False)
    assert summary.failed == 0
    return root / "out"


def test_hr_is_cropped_to_a_multiple_of_every_scale_and_names_are_flat(export):
    assert toolbox_multiple([2, 3]) == 6 and toolbox_multiple([2, 4]) == 4 and toolbox_multiple([1, 3]) == 3
    sizes = {p.name: Image.open(p).size for p in sorted((export / "HR").iterdir())}
    assert sizes == {"img0.png": (48, 36), "img1.png": (42, 36), "sub_img2.png": (36, 48)}
    meta = (export / META_INFO).read_text().splitlines()
    assert meta == ["img0.png (36,48,3)", "img1.png (36,42,3)", "sub_img2.png (48,36,3)"]


@pytest.mark.parametrize("scale", [2, 3])
@pytest.mark.parametrize("lq_root", ["LR", "baselines/bicubic/LR"])
def test_basicsr_paired_dataset_reads_the_export_in_both_modes(export, scale, lq_root):
    random.seed(0)
    lq, gt = str(export / lq_root / f"x{scale}"), str(export / "HR")
    for meta in (str(export / META_INFO), None):
        pairs = basicsr_paired_paths(lq, gt, meta)
        assert len(pairs) == 3
        for pair in pairs:
            g, q = basicsr_item(pair, scale, "train", gt_size=12)
            assert g.shape == (12, 12, 3) and q.shape == (12 // scale, 12 // scale, 3)
            g, q = basicsr_item(pair, scale, "val")
            assert g.shape == _png_array(pair["gt_path"]).shape            # nothing cropped: HR = LR x s
            assert g.shape[:2] == (q.shape[0] * scale, q.shape[1] * scale)


@pytest.mark.parametrize("scale", [2, 3])
def test_liif_paired_folders_read_the_export_at_its_integer_scale(export, scale):
    random.seed(0)
    pairs = liif_paired_folders(str(export / "LR" / f"x{scale}"), str(export / "HR"))
    assert len(pairs) == 3
    for lr, hr in pairs:
        assert hr.shape[-2] // lr.shape[-2] == scale and hr.shape[-2] == lr.shape[-2] * scale
        crop_lr, crop_hr = liif_sr_implicit_paired(lr, hr)
        assert torch.equal(crop_hr, hr) and torch.equal(crop_lr, lr)      # nothing cut off
        crop_lr, crop_hr = liif_sr_implicit_paired(lr, hr, inp_size=4)
        assert crop_lr.shape[-2:] == (4, 4) and crop_hr.shape[-2:] == (4 * scale, 4 * scale)
    # LR and HR are the same picture, paired by position: the bicubic LR is exactly that of the cropped HR
    for lr, hr in liif_paired_folders(str(export / "baselines/bicubic/LR" / f"x{scale}"), str(export / "HR")):
        expected = (quantize_8bit(resize_to_lr(hr * 2 - 1, scale)) + 1) / 2
        assert float((lr - expected).abs().max()) < 1e-6


def test_the_toolbox_layout_refuses_fractional_scales_and_hr_size_outputs(tmp_path, export):
    synth = Synthesizer.from_checkpoint(_write_lfm_checkpoint(tmp_path / "lfm.pt", SolverSpec.create("rk4", steps=2)))
    with pytest.raises(ValueError, match="integer scales.*x2.5.*TOOLBOXES"):
        write_lr_dataset(synth, export / "HR", tmp_path / "o", [2, 2.5], layout="toolbox")
    with pytest.raises(ValueError, match="size=lr, not size=both"):
        write_lr_dataset(synth, export / "HR", tmp_path / "o", [2], layout="toolbox", size="both")
    with pytest.raises(ValueError, match="layout='basicsr' is not one of"):
        write_lr_dataset(synth, export / "HR", tmp_path / "o", [2], layout="basicsr")
