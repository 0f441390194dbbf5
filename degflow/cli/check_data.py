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

from degflow.cli.app import compose, run_tool
from degflow.data.validate import check_data

__all__ = ["main"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from omegaconf import OmegaConf

    cfg = compose("config", argv, job_name="data_check")
    data = OmegaConf.to_container(cfg.data, resolve=True, throw_on_missing=False)
    check_node = cfg.get("check")
    check_cfg = OmegaConf.to_container(check_node, resolve=True) if OmegaConf.is_config(check_node) else {}
    deep = bool(check_cfg.get("deep", True)) if isinstance(check_cfg, dict) else True

    collector = _Collect()
    logger = logging.getLogger("degflow.data")
    old_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    try:
        report = check_data(data, deep=deep)
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


def cli() -> None:
    run_tool(main)


if __name__ == "__main__":
    cli()
