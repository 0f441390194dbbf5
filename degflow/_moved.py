"""Import paths from before the package was arranged in layer folders (degflow 0.1 -> 0.2).

``import degflow.procedural`` or a saved run config's ``_target_: degflow.evaluate.CollectSweep``
still resolves: the old name is the very module object at its new home (one module, two
names). Old library paths warn (:class:`DeprecationWarning`); the commands users type
(``python -m degflow.quickstart``, ``degflow.evaluate``, ``degflow.report``,
``degflow.merge_shards``, ``degflow.convert_official``, ``degflow.data.check``) are not
deprecated: ``python -m`` runs the new module's code under its old name.

The table of moved paths is in docs/ARCHITECTURE.md ("Moved import paths"); a test checks
that both agree and that every old name resolves.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: old module name -> new module name (library modules: importing the old name warns).
MOVED: dict[str, str] = {
    "degflow.scales": "degflow.core.scales",
    "degflow.timemap": "degflow.core.timemap",
    "degflow.spline": "degflow.core.spline",
    "degflow.solvers": "degflow.core.solvers",
    "degflow.losses": "degflow.core.losses",
    "degflow.resize": "degflow.core.resize",
    "degflow.files": "degflow.infra.files",
    "degflow.runtime": "degflow.infra.runtime",
    "degflow.console": "degflow.infra.console",
    "degflow.cluster": "degflow.infra.cluster",
    "degflow.checkpoint": "degflow.infra.checkpoint",
    "degflow.config": "degflow.cli.app",
    "degflow.perceptual": "degflow.metrics.perceptual",
    "degflow.noise_metrics": "degflow.metrics.noise",
    "degflow.procedural": "degflow.baselines.procedural",
    "degflow.plots": "degflow.viz.plots",
    "degflow.visualize": "degflow.viz.strips",
    "degflow.loggers": "degflow.training.loggers",
    "degflow.lr_dataset": "degflow.jobs.lr_dataset",
    "degflow.evaluation": "degflow.jobs.evaluation",
    "degflow.sr.models": "degflow.models.sr",
    "degflow.sr.pairs": "degflow.data.sr_pairs",
}
#: commands users type as ``python -m <old name>`` -> the entry point's module (no warning).
COMMANDS: dict[str, str] = {
    "degflow.quickstart": "degflow.cli.quickstart",
    "degflow.evaluate": "degflow.cli.evaluate",
    "degflow.report": "degflow.cli.report",
    "degflow.merge_shards": "degflow.cli.merge_shards",
    "degflow.convert_official": "degflow.cli.convert_official",
    "degflow.data.check": "degflow.cli.check_data",
}
#: modules that were split: old name -> where each part went (imports of the old name fail with this).
SPLIT: dict[str, str] = {
    "degflow.metrics (module)": "degflow.metrics.image (psnr_y, ssim_y, rgb_to_y, eval_protocol)",
    "degflow.diagnostics": ("degflow.baselines.kernel (the least-squares linear degradation), "
                            "degflow.metrics.noise.noise_sigma, experiments/studies/knot_gap/gap.py, "
                            "experiments/studies/knot_ceiling/registration.py"),
    "degflow.checkpoint.build_model, model_entry": "degflow.models.registry",
}


class _Alias(importlib.machinery.SourceFileLoader):
    """Loads an old name as the module object of its new name; ``python -m old`` gets the
    new module's source (runpy asks the loader for code)."""

    def __init__(self, old: str, new: str, path: str):
        super().__init__(old, path)
        self.new = new

    def create_module(self, spec):
        if self.name in MOVED:
            warnings.warn(f"{self.name} moved to {self.new}; import it from there "
                          "(docs/ARCHITECTURE.md, 'Moved import paths')", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The new module is already executed; the old name is just another key in sys.modules."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname) or COMMANDS.get(fullname)
        if new is None:
            return None
        spec = importlib.util.find_spec(new)
        if spec is None or spec.origin is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(fullname, new, spec.origin), origin=spec.origin)


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once): an old name is never a real module
    any more, and a stale copy of an old file elsewhere (an old install) must not shadow the alias."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
