"""Dataset validator.

    python -m degflow.data.check data=realsr data.root=/path/to/RealSR_v2_ordered
    python -m degflow.data.check data=paired data.root=/path/to/pairs data.train_scales=[1,4]
    python -m degflow.data.check                       # the default (data=demo)
    python -m degflow.data.check data=realsr data.root=... +check.deep=false   # headers only

Arguments are Hydra overrides of the project config (conf/config.yaml). The validator
uses the same scanning code as the datasets (``scan_realsr`` / ``scan_paired``), decodes
every image (unless ``+check.deep=false``), and prints what it found (layout, cameras,
splits, scales, pair counts, image sizes) and one line per problem (missing scale folder,
missing partner, size mismatch, unreadable file, image smaller than the crop size, ...).

Exit status: 0 = no problems, 1 = problems found, 2 = the configuration itself is invalid
(unknown override, data.root not given, unknown data option).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import degflow

__all__ = ["main", "check_data", "CONF_DIR"]

CONF_DIR = Path(degflow.__file__).resolve().parents[1] / "conf"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_data(data: dict, deep: bool = True):
    """Scan the data option described by ``data`` (the plain ``cfg.data`` dict, with its
    ``_target_``). Returns a Report. Raises ValueError for configuration errors."""
    from degflow.data.common import Report
    from degflow.data.paired import scan_paired
    from degflow.data.realsr import scan_realsr
    from degflow.scales import check_scales, format_scales

    target = str(data.get("_target_", ""))
    kind = target.rsplit(".", 1)[-1]

    def need_root():
        root = data.get("root")
        if root in (None, "", "???"):
            raise ValueError(f"data.root is required for {kind}: pass data.root=/path")
        return root

    if kind == "realsr_data":
        report = scan_realsr(
            need_root(), data.get("camera", "Canon"), data.get("train_split", "Train"),
            data.get("val_split", "Test"), data.get("train_scales", (1, 2, 4)),
            data.get("val_scales", (1, 2, 3, 4)), deep=deep)
    elif kind == "paired_data":
        report = scan_paired(
            need_root(), data.get("train_scales", (1, 4)), data.get("val_scales"),
            data.get("val_fraction", 0.1), data.get("val_root"), data.get("seed", 0),
            deep=deep)
    elif kind == "demo_data":
        from degflow.data.demo import demo_image_paths
        from degflow.data.images import ImageReadError, read_image, read_image_size

        ts = check_scales(data.get("train_scales", (1, 2, 4)), "data.train_scales")
        vs = check_scales(data.get("val_scales", (1, 1.5, 2, 2.5, 3, 3.5, 4)),
                          "data.val_scales")
        report = Report(kind="demo", root="scikit-image package data",
                        layout="procedural degradation (any scale)")
        try:
            train, val = demo_image_paths()
        except ValueError as e:
            report.problems.append(str(e))
            return report
        report.lines.append(f"demo: {len(train)} train / {len(val)} val photos from "
                            f"{train[0].parent}; train scales "
                            f"{format_scales(ts)}, val scales {format_scales(vs)} (LR synthesized)")
        for p in train + val:
            try:
                x = read_image(p) if deep else None
                w, h = (x.shape[-1], x.shape[-2]) if deep else read_image_size(p)
                report.lines.append(f"  {p.name}: {w}x{h}")
            except ImageReadError as e:
                report.problems.append(f"unreadable: {e}")
        return report
    else:
        raise ValueError(f"data._target_={target!r} is not a data option the validator "
                         f"knows; expected degflow.data.<demo|realsr|paired>.<factory>")

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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3",
                                   job_name="data_check"):
            cfg = compose("config", overrides=argv)
        data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=False)
        check_node = cfg.get("check")
        check_cfg = (OmegaConf.to_container(check_node, resolve=True)
                     if OmegaConf.is_config(check_node) else {})
    except Exception as e:  # hydra / omegaconf config errors: no stack trace
        print(f"config error: {_one_line(f'{type(e).__name__}: {e}')}", file=sys.stderr)
        return 2
    deep = bool(check_cfg.get("deep", True)) if isinstance(check_cfg, dict) else True

    collector = _Collect()
    logger = logging.getLogger("degflow.data")
    old_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    try:
        report = check_data(data, deep=deep)
    except ValueError as e:
        print(f"config error: {_one_line(e)}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(collector)
        logger.setLevel(old_level)

    print(f"degflow data check: {data.get('_target_')} ({'full decode' if deep else 'headers only'})")
    for line in report.lines:
        print(line.rstrip())
    for note in report.notes:
        print(f"note: {_one_line(note)}")
    for msg in dict.fromkeys(collector.messages):
        print(f"conversion: {_one_line(msg)}")
    for p in report.problems:
        print(f"PROBLEM: {_one_line(p)}")
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s) found")
        return 1
    print("OK: no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
