"""The import graph of degflow follows its layers (docs/ARCHITECTURE.md, "Layering").

Every module of the package, its function-level (lazy) imports included, may import only
modules of its own layer or of a lower one:

    0 utility / math   files, scales, runtime, resize, timemap, spline, solvers, losses,
                       metrics, perceptual, diagnostics, visualize, config, the package itself
    1 models, data     models/, data/, checkpoint, loggers
    2 generation       generation/ (the Synthesizer and tiling)
    3 jobs             training/, lr_dataset, evaluation, sr/ (none imports another; sr.models and
                       sr.pairs are layer 1)
    4 entry points     the package's ``python -m`` modules (evaluate, quickstart); train.py,
                       synthesize.py and experiments/ live outside the package
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "degflow"

#: module-name prefix -> layer; the longest matching prefix wins.
LAYERS: dict[str, int] = {
    "degflow": 0,
    "degflow.files": 0, "degflow.scales": 0, "degflow.runtime": 0, "degflow.resize": 0,
    "degflow.timemap": 0, "degflow.spline": 0, "degflow.solvers": 0, "degflow.losses": 0,
    "degflow.metrics": 0, "degflow.perceptual": 0, "degflow.visualize": 0, "degflow.config": 0,
    "degflow.noise_metrics": 0, "degflow.procedural": 0, "degflow.plots": 0, "degflow.cluster": 0,
    "degflow.models": 1, "degflow.data": 1, "degflow.checkpoint": 1, "degflow.loggers": 1,
    "degflow.generation": 2,
    "degflow.training": 3, "degflow.lr_dataset": 3, "degflow.evaluation": 3,
    "degflow.evaluate": 4, "degflow.convert_official": 4, "degflow.report": 4, "degflow.merge_shards": 4,
    "degflow.quickstart": 4, "degflow.console": 0, "degflow.diagnostics": 0,
    "degflow.sr": 3, "degflow.sr.models": 1, "degflow.sr.pairs": 1,
}
#: jobs of the same layer that must stay independent of each other.
SEPARATE_JOBS = ("degflow.training", "degflow.lr_dataset", "degflow.evaluation", "degflow.sr")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, module: str) -> set[str]:
    """Every degflow module ``path`` imports, at any depth of the file (lazy imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                     # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}    # "from degflow import files"
    known = _modules()
    return {n for n in out if n in known}


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        raise AssertionError(f"{module} has no layer in tests/test_layering.py LAYERS")
    return LAYERS[prefix]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_import_only_their_own_or_lower_layers(module):
    path = _modules()[module]
    for target in _imports(path, module):
        assert _layer(target) <= _layer(module), (
            f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")


def test_nothing_outside_training_imports_training_and_generation_imports_no_job():
    for module, path in _modules().items():
        targets = _imports(path, module)
        if not _within(module, "degflow.training") and _layer(module) < 4:   # entry points may train
            assert not [t for t in targets if _within(t, "degflow.training")], module
        if _within(module, "degflow.generation"):
            assert not [t for t in targets if any(_within(t, job) for job in SEPARATE_JOBS)], module
        for job in SEPARATE_JOBS:
            if _within(module, job):
                others = [j for j in SEPARATE_JOBS if j != job]
                assert not [t for t in targets if any(_within(t, o) for o in others)], module


def test_the_checker_sees_imports_inside_functions():
    """The parser itself: an import inside a function counts."""
    source = PACKAGE / "generation" / "synthesizer.py"
    assert "degflow.solvers" in _imports(source, "degflow.generation.synthesizer")
    lazy = PACKAGE / "checkpoint.py"                           # imports the models inside build_model
    assert "degflow.models.rae" in _imports(lazy, "degflow.checkpoint")
