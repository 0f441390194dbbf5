"""The per-scale validation table both training stages write into metrics.json."""

import pytest
import torch

from degflow.training.validation import ScaleAverages


def test_the_table_holds_per_scale_means_none_where_unmeasured_and_the_heldout_flag():
    averages = ScaleAverages([1.0, 2.5, 4.0], ("psnr_y", "psnr_y_bicubic"))
    for psnr in (30.0, 32.0):
        for s in (1.0, 2.5, 4.0):
            averages.add(s, psnr_y=torch.tensor(psnr + s, dtype=torch.float64))
            if s != 1.0:
                averages.add(s, psnr_y_bicubic=psnr - 10)
        averages.image_done()
    table = averages.table(train_scales=[1.0, 4.0])
    assert list(table) == ["x1", "x2.5", "x4"]
    assert table["x2.5"] == {"psnr_y": 33.5, "psnr_y_bicubic": 21.0, "heldout": True}
    assert table["x1"] == {"psnr_y": 32.0, "psnr_y_bicubic": None, "heldout": False}
    assert table["x4"]["heldout"] is False


def test_an_empty_validation_set_and_unknown_metrics_are_refused():
    averages = ScaleAverages([1.0, 2.0], ("psnr_y",))
    with pytest.raises(KeyError, match="ssim"):
        averages.add(2.0, ssim=0.5)
    with pytest.raises(ValueError, match="validation set is empty"):
        averages.table([1.0, 2.0])
