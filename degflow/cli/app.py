"""The one CLI wrapper: every command runs through here, with the same exit codes and error line.

- :func:`run_cli`: a Hydra app (``train.py``, ``synthesize.py``, ``evaluate``, ``quickstart``,
  ``sr-compare``);
- :func:`run_tool`: a tool with its own arguments (``report``, ``merge-shards``) or one that
  composes a config without a run folder (``check-data``, ``convert-official``, :func:`compose`).

Both print a usage or environment error as one ``error: <message>`` line on stderr and exit
with 2 (:data:`EXIT_USAGE`); ``DEGFLOW_DEBUG=1`` (or Hydra's ``HYDRA_FULL_ERROR=1``) shows the
traceback instead. This is also the boundary between Hydra and the library: resolvers, and
DictConfig -> plain Python (:func:`to_plain`); everything below receives plain dicts,
dataclasses and numbers.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from degflow.infra.conf import CONF_DIR

# Overrides that never name a run: where and how it runs, is tracked or checkpointed, not what
# it trains (changing the checkpoint cadence of a running job must not restart it elsewhere).
RUN_NAME_IGNORED = ("stage", "resume", "device", "num_workers", "threads", "output_root", "rae_ckpt",
                    "stage.ckpt_every", "stage.ckpt_minutes", "stage.keep_every", "stage.log_every",
                    "data_memory_gib", "channels_last", "compile", "stage.latent_cache_dir")
RUN_NAME_IGNORED_NODES = ("logger", "hydra")
# Config nodes a stage never reads: changing one must not start a new run of that stage
# (``stage=rae loss.lpips_weight=0`` resumes the RAE run; the RAE of stage 2 comes from its checkpoint).
UNUSED_BY_STAGE = {
    "rae": ("loss", "spline", "solver", "model/lfm", "model.lfm", "eval.lpips", "eval.lpips_backbone_weights"),
    "lfm": ("model/rae", "model.rae"),
    # python -m degflow.evaluate: a sweep job is named by its settings, not by its files
    "evaluate": ("ckpt", "out", "generated", "real", "hr", "collect", "noise"),
}
SLUG_MAX = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _under(key: str, node: str) -> bool:
    return key == node or key.startswith(node + ".") or key.startswith(node + "/")


def run_overrides(stage: str, overrides: Iterable[str]) -> list[str]:
    """The overrides that name a run of ``stage``, sorted: those that change what it trains."""
    kept = []
    for item in overrides:
        key = str(item).partition("=")[0].lstrip("+~")
        if key in RUN_NAME_IGNORED or any(_under(key, n) for n in RUN_NAME_IGNORED_NODES):
            continue
        if any(_under(key, n) for n in UNUSED_BY_STAGE.get(stage, ())):
            continue
        kept.append(str(item))
    return sorted(kept, key=lambda o: (o.partition("=")[0].lstrip("+~"), o))


def run_slug(stage: str, overrides: Iterable[str]) -> str:
    """A run-directory name from the command line: same command, same folder.

    Only :func:`run_overrides` count. Each ``key=value`` becomes ``key-value`` and they are
    joined by ``+`` (``stage.steps=40 stage.warmup_steps=10`` ->
    ``stage.steps-40+stage.warmup_steps-10``), so a path into the folder can be passed back
    unquoted as ``ckpt=``/``rae_ckpt=`` (Hydra's parser refuses ``=`` and ``,`` in a value).
    Characters outside ``[A-Za-z0-9._-]`` become ``_`` and then a short hash of the overrides
    is appended so that different commands never share a folder; names longer than 120
    characters are shortened the same way. No overrides -> ``default``.
    """
    kept = run_overrides(stage, overrides)
    if not kept:
        return "default"
    digest = hashlib.sha1("\n".join(kept).encode()).hexdigest()
    parts, lossy = [], False
    for item in kept:
        key, _, value = item.partition("=")
        text = f"{key.lstrip('+~')}-{value}"
        clean = _UNSAFE.sub("_", text)
        lossy |= clean != text
        parts.append(clean)
    slug = "+".join(parts)
    if len(slug) > SLUG_MAX:
        head = slug[:SLUG_MAX - 13]
        if "+" in head:  # end on a whole override
            head = head[:head.rfind("+")]
        return head + "-" + digest[:12]
    return f"{slug}-{digest[:8]}" if lossy else slug


def process_label() -> str:
    """``{host}-{pid}``: with the time, a log folder name no other run shares (two runs started in
    the same second, on one node or on two nodes writing to one shared folder)."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def register_resolvers() -> None:
    """Register the resolvers of the configs (idempotent): ``${run_slug:stage,overrides}``
    (``conf/config.yaml``) and ``${process_label:}`` (:func:`process_label`, in log folder names)."""
    if not OmegaConf.has_resolver("run_slug"):
        OmegaConf.register_new_resolver("run_slug", lambda stage, overrides: run_slug(str(stage), list(overrides)))
    if not OmegaConf.has_resolver("process_label"):
        OmegaConf.register_new_resolver("process_label", process_label)


#: What Hydra writes into a run folder before the task runs (children before their folder).
HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".hydra")


def forget_run_folder(run_dir: Path, files: Iterable[str], created: Iterable[Path] = ()) -> None:
    """Remove the run folder of a refused run when it holds nothing but ``files`` (names relative
    to it, children before their folder: what Hydra and the refused run wrote), then each folder
    of ``created`` (made by this process) that is left empty. Anything else in ``run_dir`` (an
    earlier run's files): keep it all."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in files]
    if any(path not in paths for path in run_dir.rglob("*")):
        return
    for path in paths:
        try:
            path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
        except OSError:
            return
    for folder in (run_dir, *created):
        try:
            folder.rmdir()          # only when empty
        except OSError:
            pass


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve a composed config into plain dicts/lists (``hydra`` node dropped)."""
    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    plain.pop("hydra", None)
    return plain


def hoist_multirun_flag(argv: list[str]) -> list[str]:
    """Move ``-m``/``--multirun`` before the overrides so ``train.py stage=lfm -m a=1,2`` works.

    Hydra's argument parser only accepts overrides after its flags; researchers type the flag
    anywhere. Only this boolean flag is moved; everything else keeps its order.
    """
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    rest = [a for a in argv[1:] if a not in ("-m", "--multirun")]
    return [argv[0], *flags, *rest]


EXIT_USAGE = 2
# Bad overrides or config values, missing/unreadable paths, unwritable folders, missing packages.
USAGE_ERRORS = (ValueError, OSError, ImportError, HydraException, OmegaConfBaseException)


def run_cli(task: Callable[[DictConfig], Any], config_name: str, *,
            exit_status: Callable[[Any], int] | None = None) -> None:
    """Run ``task`` as the Hydra app of ``conf/{config_name}.yaml`` with the documented exit codes.

    - a usage or environment error (:data:`USAGE_ERRORS`: anything Hydra refuses before the
      task starts, an invalid config value, a missing or unreadable path, an unwritable
      folder) prints ``error: <message>`` on stderr, no traceback, and exits with 2;
    - anything else is a crash: Python's traceback and exit status 1;
    - ``task`` may end the process with its own status (``SystemExit``).

    ``exit_status`` is for batch jobs whose result says how they went (``synthesize.py``:
    0 all images written, 1 some failed): it maps a job's return value to its exit status.
    Then every job of an in-process multirun (``-m``) runs even when one of them hits a
    usage error (reported as above, status 2), and the process exits with the largest
    status of its jobs.

    ``DEGFLOW_DEBUG=1`` or ``HYDRA_FULL_ERROR=1`` shows the traceback of usage errors too.
    """
    full_error = debug()
    quiet_logging_errors()
    register_resolvers()            # every config may name ${process_label:} / ${run_slug:...} in its run folder
    started = False
    statuses: list[int] = []

    @functools.wraps(task)  # Hydra unwraps it: job name and paths follow the entry point's file
    def guarded(cfg: DictConfig) -> Any:
        nonlocal started
        started = True
        try:
            result = task(cfg)
        except USAGE_ERRORS as err:
            if full_error:
                raise
            if exit_status is None:
                _usage_error(err)
            _print_usage_error(err)
            statuses.append(EXIT_USAGE)
            return None
        if exit_status is not None:
            statuses.append(int(exit_status(result)))
        return result

    _APP.update(config=config_name, name=command_name())
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(guarded)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing; reported here
    try:
        app()
    except Exception as err:  # noqa: BLE001 - sorted into usage errors and crashes
        if started or full_error:
            raise
        _usage_error(err)  # before the task ran, everything is about the command line or its paths
    finally:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if max(statuses, default=0):
        raise SystemExit(max(statuses))


def command_name() -> str:
    """How the user called this command: ``train.py``, ``python -m degflow evaluate``, ``python -m degflow.evaluate``."""
    argv0 = sys.argv[0]
    if " " in argv0:                                   # the dispatcher: "<path>/__main__.py <tool>"
        return f"python -m degflow {argv0.rsplit(' ', 1)[1]}"
    path = Path(argv0)
    if path.name in ("__main__.py", "-c") or not path.suffix:
        return "python -m degflow"
    if path.parent.name == "cli" and path.parent.parent.name == "degflow":   # python -m degflow.<old name>
        return f"python -m degflow.{'data.check' if path.stem == 'check_data' else path.stem}"
    return path.name


def quiet_logging_errors() -> None:
    """A log line that cannot be written (a full disk under the log file) is dropped instead of
    printing logging's multi-line "--- Logging error ---" report, unless :func:`debug`: the error
    that matters reaches stderr as its one ``error:`` line."""
    if not debug():
        logging.raiseExceptions = False


def debug() -> bool:
    """Whether errors show their traceback (``DEGFLOW_DEBUG=1`` or ``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get("DEGFLOW_DEBUG") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


class ToolParser(argparse.ArgumentParser):
    """argparse for the tools with their own arguments: a bad argument is a usage error
    (:func:`run_tool` prints the one ``error:`` line and exits 2), not argparse's usage dump."""

    def __init__(self, prog: str, doc: str, **kwargs: Any):
        super().__init__(prog=prog, description=doc.strip(), formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)

    def error(self, message: str):
        raise ValueError(f"{message} (python -m {self.prog.removeprefix('python -m ')} --help for the arguments)")


def run_tool(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)`` (default ``sys.argv[1:]``) and exit with its status; a usage or
    environment error (:data:`USAGE_ERRORS`) prints one ``error:`` line and exits 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_logging_errors()
    try:
        status = main(argv)
    except USAGE_ERRORS as err:
        if debug():
            raise
        _usage_error(err)
    raise SystemExit(int(status or 0))


def compose(config_name: str, overrides: Iterable[str], job_name: str, remember: bool = True) -> DictConfig:
    """Compose ``conf/{config_name}.yaml`` with ``overrides`` without starting a Hydra run
    (no run folder, no log file). Errors in the overrides raise Hydra's exceptions
    (usage errors for :func:`run_tool`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    if remember:
        _APP.update(config=config_name, name=command_name())
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
        return hydra_compose(config_name, overrides=list(overrides))


def _print_usage_error(err: BaseException) -> None:
    print(f"error: {usage_message(err)}", file=sys.stderr, flush=True)


def usage_message(err: BaseException) -> str:
    """One line for a usage or environment error: Hydra's multi-line messages condensed (an
    unknown key gets a "did you mean", an unknown option the valid ones), OS errors named."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = sorted(err.options or [])
        close = difflib.get_close_matches(name, options, n=1)
        return (f"{group}={name!r} is not one of {options}"
                + (f" (did you mean {group}={close[0]}?)" if close else ""))
    message = str(err).strip() or type(err).__name__
    unknown = re.match(r"Could not override '([^']+)'", message)
    if unknown:
        key = unknown.group(1)
        close = _close_keys(key)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (f"{key!r} is not a setting of {_APP['name'] or 'this command'}{hint} "
                f"(--help lists the settings; +{key}=... adds a new key on purpose)")
    cause = str(err.__cause__ or "").strip().splitlines()
    if cause and cause[0] not in message:  # Hydra: "Could not ..." caused by "Key 'k' not in ..."
        message = f"{message}: {cause[0]}"
    if isinstance(err, OSError) and not isinstance(err, (FileNotFoundError, HydraException)):
        message = f"{type(err).__name__}: {message}"
    if getattr(err, "override", None):  # Hydra's parser names the override apart from its message
        message = f"cannot parse the override {err.override!r} (quote a value holding '=' or ','): {message}"
    message = message.split("\nConfig search path:")[0]
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


#: the config of the command being run (for "did you mean"): set by run_cli / compose
_APP: dict[str, Any] = {"name": None, "config": None}


def _close_keys(key: str) -> list[str]:
    """Settings of the running command's config whose dotted name is close to ``key``."""
    if not _APP["config"]:
        return []
    try:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()          # the failed app left it initialized; the process is ending
        cfg = compose(_APP["config"], [], job_name="did_you_mean", remember=False)
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy; never fail the error message
        return []
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            name = f"{prefix}{k}"
            keys.append(name)
            if isinstance(v, dict):
                walk(v, name + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    keys = [k for k in keys if not k.startswith("hydra")]
    return difflib.get_close_matches(key, keys, n=1, cutoff=0.8) or difflib.get_close_matches(
        key.rpartition(".")[2], keys, n=1, cutoff=0.8)


def _usage_error(err: BaseException) -> None:
    _print_usage_error(err)
    raise SystemExit(EXIT_USAGE) from None
