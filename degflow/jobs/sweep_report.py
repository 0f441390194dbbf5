"""Turn a sweep folder into an answer: ``python -m degflow.report <sweep dir>``.

Reads every job of a Hydra multirun (``train.py -m ...``, any launcher) and writes, under
``<sweep dir>/report/`` (``--out`` to change it):

- ``report.md``: one table row per job (status, SLURM job id, the swept keys, per-scale
  Y-PSNR / SSIM / LPIPS with held-out scales marked ``*``, NFE, seconds), then every job
  that failed with its error and where its traceback and scheduler logs are;
- ``report.csv``: the same table, one row per job, one column per swept key and per metric;
- ``psnr_vs_nfe.png``: mean held-out-scale Y-PSNR against NFE, one line per solver;
- ``metric_vs_scale.png``: Y-PSNR / SSIM / LPIPS against the scale, one line per setting
  (held-out scales drawn as open markers).

Works on a sweep that is still running or has failed jobs: a job is ``completed``,
``failed`` (error from ``job.json``, traceback in its ``error.txt``), ``interrupted``
(preempted and requeued, or stopped), ``running`` (started, no result yet; also a job the
scheduler killed outright, see its log) or ``pending`` (in the sweep's ``multirun.yaml`` but
no folder yet). Exit code 0 when a report was written, 2 when the folder holds no sweep.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from degflow.infra.cluster import ERROR_FILE, JOB_FILE, read_job_record
from degflow.viz.tables import write_table

METRICS = ("psnr_y", "ssim_y", "lpips")
SUBMITIT_DIR = ".submitit"


@dataclass
class Job:
    """One job of a sweep as found on disk (or only announced in ``multirun.yaml``)."""

    overrides: list[str]
    run_dir: Path | None = None
    status: str = "pending"
    job_id: str | None = None
    error: str | None = None
    seconds: float | None = None
    attempts: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    solver: str | None = None

    def value(self, key: str) -> str | None:
        """The value this job's overrides give ``key`` (None when it does not set it)."""
        return parse_overrides(self.overrides).get(key)


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["solver=rk4", "+experiment=x"]`` -> ``{"solver": "rk4", "experiment": "x"}``."""
    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep:
            pairs[key.lstrip("+~")] = value
    return pairs


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper expands the sweep in ``multirun.yaml``
    (``hydra.sweeper.params`` of the config plus the command line); ``[]`` if unreadable."""
    conf = _read_yaml(sweep_dir / "multirun.yaml")
    if not isinstance(conf, dict):
        return []
    hydra_conf = conf.get("hydra") or {}
    params = (hydra_conf.get("sweeper") or {}).get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list((hydra_conf.get("overrides") or {}).get("task") or [])
    try:   # Hydra's own expansion, so the job list matches what the sweep launched
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # noqa: BLE001 - a sweep spec this version cannot parse: report what is on disk
        return []
    return [list(job) for batch in batches for job in batch]


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders under ``sweep_dir`` that hold a job (its ``job.json``, ``metrics.json`` or
    Hydra's ``.hydra/overrides.yaml``); the report folder and submitit logs are skipped."""
    found = set()
    for pattern in (JOB_FILE, "metrics.json", ".hydra/overrides.yaml"):
        for path in sweep_dir.rglob(pattern):
            job_dir = path.parent.parent if pattern.startswith(".hydra") else path.parent
            rel = job_dir.relative_to(sweep_dir).parts
            if rel and rel[0] not in (SUBMITIT_DIR, "report"):
                found.add(job_dir)
    return sorted(found)


def read_job(run_dir: Path) -> Job:
    """One job's overrides, status, scheduler id, timing and final metrics from its folder."""
    record = read_job_record(run_dir) or {}
    metrics = _read_json(run_dir / "metrics.json") or {}
    overrides = record.get("overrides") or metrics.get("overrides") or _read_yaml(run_dir / ".hydra/overrides.yaml") or []
    status = record.get("status") or ("completed" if metrics else "running")
    config = _read_yaml(run_dir / ".hydra/config.yaml")
    solver = None
    if isinstance(config, dict) and isinstance(config.get("solver"), dict):
        solver = config["solver"].get("method")
    attempts = record.get("attempts") or []
    seconds = [a["seconds"] for a in attempts if isinstance(a.get("seconds"), (int, float))]
    return Job(overrides=[str(o) for o in overrides], run_dir=run_dir, status=status, job_id=record.get("job_id"),
               error=record.get("error"), seconds=round(sum(seconds), 1) if seconds else None,
               attempts=len(attempts), metrics=metrics, solver=solver)


def collect_jobs(sweep_dir: str | Path) -> list[Job]:
    """Every job of the sweep: those with a folder, then those still pending."""
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(d) for d in _job_dirs(sweep_dir)]
    seen = [set(j.overrides) for j in jobs]
    for overrides in expected_jobs(sweep_dir):
        if set(overrides) not in seen:
            jobs.append(Job(overrides=overrides))
    keys = swept_keys(jobs)

    def order(job: Job) -> list[tuple[int, float, str]]:
        values = [job.value(k) or "" for k in keys]   # numbers numerically, text alphabetically
        return [(0, float(v), "") if _is_number(v) else (1, 0.0, v) for v in values]

    return sorted(jobs, key=order)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, in first-seen order."""
    parsed = [parse_overrides(job.overrides) for job in jobs]
    keys = list(dict.fromkeys(key for pairs in parsed for key in pairs))   # first-seen order
    return [k for k in keys if len({pairs.get(k) for pairs in parsed}) > 1]


def _scale_value(key: str) -> float:
    try:
        return float(key.lstrip("x"))
    except ValueError:
        return math.inf


def scale_columns(jobs: list[Job]) -> list[tuple[str, bool]]:
    """``(scale key, held out)`` over all jobs' metrics, sorted by scale."""
    scales: dict[str, bool] = {}
    for job in jobs:
        for key, row in (job.metrics.get("scales") or {}).items():
            scales[key] = scales.get(key, False) or bool(row.get("heldout"))
    return sorted(scales.items(), key=lambda kv: _scale_value(kv[0]))


def table(jobs: list[Job], sweep_dir: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the report (one row per job)."""
    keys = swept_keys(jobs)
    scales = scale_columns(jobs)
    header = ["status", "job_id", *keys]
    present = [m for m in (*METRICS, "psnr_y_kernel") if any(row.get(m) is not None for j in jobs
                                                            for row in (j.metrics.get("scales") or {}).values())]
    header += [f"{s}{'*' if held else ''}/{m}" for s, held in scales for m in present]
    header += ["heldout_psnr_y", "nfe", "seconds_per_image", "job_seconds", "step", "run_dir"]
    rows = []
    for job in jobs:
        pairs = parse_overrides(job.overrides)
        m = job.metrics
        row: list[Any] = [job.status, job.job_id, *[pairs.get(k) for k in keys]]
        for s, _ in scales:
            values = (m.get("scales") or {}).get(s) or {}
            row += [values.get(metric) for metric in present]
        row += [m.get("objective"), m.get("nfe"), m.get("seconds_per_image"), job.seconds, m.get("step"),
                str(job.run_dir.relative_to(sweep_dir)) if job.run_dir else None]
        rows.append(row)
    return header, rows


def _failure_lines(jobs: list[Job], sweep_dir: Path) -> list[str]:
    keys = swept_keys(jobs)
    lines = []
    for job in jobs:
        if job.status not in ("failed", "interrupted", "running") or job.run_dir is None:
            continue
        where = [f"`{(job.run_dir / ERROR_FILE).relative_to(sweep_dir)}`"] if (job.run_dir / ERROR_FILE).is_file() else []
        if job.job_id:
            logs = sorted((sweep_dir / SUBMITIT_DIR / job.job_id).glob("*_log.err"))
            where += [f"`{p.relative_to(sweep_dir)}`" for p in logs]
        what = job.error or ("no result yet (still running, or killed by the scheduler: see its log)"
                             if job.status == "running" else "")
        lines.append(f"- **{job.status}** `{_label(job, keys)}`"
                     f"{f' (job {job.job_id})' if job.job_id else ''}: {what}"
                     f"{'; traceback/logs: ' + ', '.join(where) if where else ''}")
    return lines


def _report_lines(jobs: list[Job], sweep_dir: Path) -> tuple[list[str], list[str]]:
    """The lines above the report's table (summary, column legend) and below it (failed jobs)."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    before = [f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".",
              "Columns `x<s>/<metric>`: validation metric at scale s (`*` = scale held out from training); "
              "`heldout_psnr_y`: mean Y-PSNR over held-out scales; `job_seconds`: wall time over all attempts; "
              "`psnr_y_kernel`: the kernel baseline fitted on the training pairs (`eval.kernel_baseline=true`)."]
    failures = _failure_lines(jobs, sweep_dir)
    return before, (["## Failed or unfinished jobs", "", *failures] if failures else [])


def _label(job: Job, keys: list[str]) -> str:
    pairs = parse_overrides(job.overrides)
    return ", ".join(f"{k}={pairs.get(k)}" for k in keys) or "default"


def plot_psnr_vs_nfe(jobs: list[Job], path: Path) -> bool:
    """Mean held-out Y-PSNR against NFE, one line per solver (and per other swept setting),
    drawn by :func:`degflow.viz.plots.plot_psnr_vs_nfe`."""
    from degflow.viz.plots import plot_psnr_vs_nfe as draw

    done = [j for j in jobs if j.metrics.get("nfe") is not None and j.metrics.get("objective") is not None]
    if not done:
        return False
    others = [k for k in swept_keys(jobs) if k not in ("solver", "solver.method", "solver.steps")]
    points = [{"label": str(job.value("solver.steps") or ""),
               "group": " ".join(filter(None, [job.solver or job.value("solver"),
                                               _label(job, others) if others else ""])) or "default",
               "nfe": job.metrics["nfe"], "psnr_y": job.metrics["objective"]} for job in done]
    draw(points, path, metric="psnr_y")
    return True


def plot_metric_vs_scale(jobs: list[Job], path: Path) -> bool:
    """Each metric against the scale, one line per job setting, held-out scales marked, drawn
    by :func:`degflow.viz.plots.plot_metric_vs_scale`."""
    from degflow.viz.plots import plot_metric_vs_scale as draw

    done = [j for j in jobs if j.metrics.get("scales")]
    if not done:
        return False
    keys = swept_keys(jobs)
    per_scale = {_label(job, keys): {str(_scale_value(k)): row for k, row in job.metrics["scales"].items()
                                     if _scale_value(k) > 1} for job in done}
    draw(per_scale, path, metrics=METRICS)
    return True


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write report.md, report.csv and the plots; returns the paths and the jobs."""
    import matplotlib

    matplotlib.use("Agg")
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ValueError(f"sweep dir {str(sweep_dir)!r} is not a folder (expected the sweep folder of "
                         f"`train.py -m ...`, e.g. outputs/sweeps/solvers)")
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        raise ValueError(f"{str(sweep_dir)!r} holds no sweep jobs (no job.json, metrics.json or .hydra/overrides.yaml "
                         f"below it, no multirun.yaml)")
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    header, rows = table(jobs, sweep_dir)
    before, after = _report_lines(jobs, sweep_dir)
    paths = write_table(out_dir, "report", header, rows, title=f"Sweep report: {sweep_dir}", before=before,
                        after=after, shown=[h for h in header if h != "run_dir"])
    text = paths["markdown"].read_text(encoding="utf-8")
    if plot_psnr_vs_nfe(jobs, out_dir / "psnr_vs_nfe.png"):
        paths["psnr_vs_nfe"] = out_dir / "psnr_vs_nfe.png"
    if plot_metric_vs_scale(jobs, out_dir / "metric_vs_scale.png"):
        paths["metric_vs_scale"] = out_dir / "metric_vs_scale.png"
    return {"paths": paths, "jobs": jobs, "markdown": text}
