"""Scales: one text label, one validation, the CLI's list / range syntax."""

import math

import numpy as np
import pytest
import torch

from degflow.core.scales import check_scale, check_scales, expand_scales, format_scales, parse_scale, scale_key, scale_label


def test_scale_range_is_inclusive_of_stop_without_float_drift():
    scales = expand_scales({"start": 1.1, "stop": 4.0, "step": 0.1})
    assert len(scales) == 30 and scales[0] == 1.1 and scales[-1] == 4.0   # (4.0 - 1.1) / 0.1 = 28.999999999999996
    assert scales[2] == 1.3 and scales[19] == 3.0                 # 1.1 + 2 * 0.1 != 1.3 in floats
    assert list(expand_scales({"start": 1.0, "stop": 2.0, "step": 0.25})) == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert list(expand_scales({"start": 1.0, "stop": 1.9, "step": 0.25})) == [1.0, 1.25, 1.5, 1.75]


def test_scale_lists_are_sorted_deduplicated_and_bad_specs_name_the_key():
    assert list(expand_scales([3, 2.25, 1.5, 2.25])) == [1.5, 2.25, 3.0]
    assert list(expand_scales(2.5)) == [2.5]
    for bad in ([0.5, 2], {"start": 2, "stop": 1, "step": 0.1}, {"start": 1, "stop": 2, "step": 0},
                {"start": 1, "stop": 2}, "2,3", []):
        with pytest.raises(ValueError, match="scales"):
            expand_scales(bad)


def test_scale_labels_have_no_trailing_zeros():
    assert [scale_label(s) for s in (2.0, 2.25, 1.1, 4, 1.3000000000000003)] == ["2", "2.25", "1.1", "4", "1.3"]


def test_folder_labels_metric_keys_and_log_text_share_one_precision():
    """2.123456789 was x2.123456789 as a folder, x2.12346 as a metric key and 2.12346 in logs."""
    s = 2.123456789
    assert scale_label(s) == "2.123456789" and scale_key(s) == "x2.123456789"
    assert format_scales([1.0, 2.5, s]) == "1,2.5,2.123456789"
    assert scale_key(4.0) == "x4" and scale_key(2.5) == "x2.5"


@pytest.mark.parametrize("bad", [0.5, 0.0, -2, math.nan, math.inf, "2", True, None, [2]])
def test_a_scale_is_a_finite_number_of_at_least_one_and_errors_name_the_key(bad):
    with pytest.raises(ValueError, match="my.key"):
        check_scale(bad, "my.key")


def test_numeric_scalars_of_any_kind_are_scales():
    assert check_scale(np.float32(2.5), "k") == 2.5 and check_scale(torch.tensor(3), "k") == 3.0
    assert check_scale(1, "k") == 1.0
    assert parse_scale("2.5") == 2.5 and parse_scale("0.5") is None and parse_scale("x2") is None
    assert check_scales([1, np.float64(2), 4], "data.train_scales") == (1.0, 2.0, 4.0)
