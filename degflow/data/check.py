"""Dataset validator.

    python -m degflow.data.check data=realsr data.root=/path/to/RealSR_v2_ordered
    python -m degflow.data.check data=paired data.root=/path/to/pairs data.train_scales=[1,4]
    python -m degflow.data.check                       # the default (data=demo)
    python -m degflow.data.check data=realsr data.root=... +check.deep=false   # headers only

Arguments are Hydra overrides of the project config (conf/config.yaml). The validator
looks the chosen option up in :data:`degflow.data.options.DATA_OPTIONS` and runs its scan,
the same scanning code as the datasets (``scan_realsr`` / ``scan_paired`` / ``scan_demo``),
over every split (train, val, and the test split when the option has one), decodes
every image (unless ``+check.deep=false``), and prints what it found (layout, cameras,
splits, scales, pair counts, image sizes) and one line per problem (missing scale folder,
missing partner, size mismatch, unreadable file, image smaller than the crop size, ...).

Exit status: 0 = no problems, 1 = problems found, 2 = the configuration itself is invalid
(unknown override, data.root not given, unknown data option).
"""

from __future__ import annotations

import logging
import sys

from degflow.config import CONF_DIR

__all__ = ["main", "check_data"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def check_data(data: dict, deep: bool = True):
    """Scan the data option described by ``data`` (the plain, composed ``cfg.data`` dict,
    with its ``_target_`` and every setting of conf/data/<option>.yaml). Returns a Report.
    Raises ValueError for configuration errors (an unknown ``_target_`` among them)."""
    from degflow.data.options import DATA_OPTIONS, option_of_target

    report = DATA_OPTIONS[option_of_target(str(data.get("_target_", "")))].scan(data, deep)
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
