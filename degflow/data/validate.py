"""The dataset validator's core: scan a data option's tree and list every problem.

``python -m degflow.data.check`` (:mod:`degflow.cli.check_data`) prints what :func:`check_data`
returns.
"""

from __future__ import annotations

from degflow.data.common import Report

__all__ = ["check_data"]


def check_data(data: dict, deep: bool = True, roles: tuple[str, ...] = ("train", "val", "test")) -> Report:
    """Scan the data option described by ``data`` (the plain, composed ``cfg.data`` dict,
    with its ``_target_`` and every setting of conf/data/<option>.yaml). Returns a Report.
    Only the splits in ``roles`` are touched (a training job's check passes ``("train", "val")``:
    it never opens a test file). Raises ValueError for configuration errors (an unknown
    ``_target_`` among them)."""
    from degflow.data.options import DATA_OPTIONS, option_of_target

    report = DATA_OPTIONS[option_of_target(str(data.get("_target_", "")))].scan(data, deep, tuple(roles))
    crop = data.get("crop_size")
    if isinstance(crop, int) and not isinstance(crop, bool):
        for r in report.records.get("train", []):
            if min(r.hr_size) < crop:
                report.problems.append(
                    f"too small: {r.hr} is {r.hr_size[0]}x{r.hr_size[1]}, smaller than "
                    f"data.crop_size={crop}")
    mult = data.get("multiple_of")
    if isinstance(mult, int) and not isinstance(mult, bool) and mult > 0:
        for r in report.records.get("val", []):
            if min(r.hr_size) < mult:
                report.problems.append(
                    f"too small: {r.hr} is {r.hr_size[0]}x{r.hr_size[1]}, smaller than "
                    f"data.multiple_of={mult}")
    return report
