"""The import graph of degflow follows its layers: one folder per layer, imports point down.

Every module of the package, its function-level (lazy) imports included, may import only
modules of its own layer or of a lower one. :data:`LAYERS` is the table; docs/ARCHITECTURE.md
shows the same table (checked below), so the documentation cannot drift from the test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "degflow"

#: layer number -> (folders of degflow/ on that layer, what the layer is). Lower layers never import higher ones.
LAYERS: dict[int, tuple[tuple[str, ...], str]] = {
    0: (("core", "infra"), "math (scales, time map, spline, solvers, losses, resizing) and plumbing (files, "
                           "runtime, console, cluster, checkpoint I/O)"),
    1: (("metrics", "baselines", "viz", "models"), "image metrics, comparison degradations, pictures and tables, "
                                                  "networks"),
    2: (("data",), "image I/O, datasets, SR pair folders, the data validator"),
    3: (("generation",), "the generation core: one checkpoint, one ODE solve, any scale"),
    4: (("training", "jobs"), "training loops; batch jobs (LR datasets, evaluation, reports, shard merge, "
                              "conversion)"),
    5: (("sr",), "downstream SR: training and scoring SR networks on the data the jobs make"),
    6: (("cli",), "entry points: every command, through one wrapper"),
}
#: top-level modules of the package besides its folders (the package face, ``python -m degflow``, old names).
TOP_LEVEL = {"degflow": 0, "degflow._moved": 0, "degflow.__main__": 6}
#: folders / modules of one layer that must not import each other (independent jobs).
SEPARATE_JOBS = ("degflow.training", "degflow.jobs.lr_dataset", "degflow.jobs.evaluation",
                 "degflow.jobs.sweep_report", "degflow.jobs.merge_shards", "degflow.jobs.convert_official",
                 "degflow.jobs.noise_fit")


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
            out |= {f"{name}.{a.name}" for a in node.names}    # "from degflow.infra import files"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.add(arg.value)
    known = _modules()
    return {n for n in out if n in known}


def _folder_layer() -> dict[str, int]:
    return {folder: layer for layer, (folders, _) in LAYERS.items() for folder in folders}


def _layer(module: str) -> int:
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    folder = module.split(".")[1]
    layers = _folder_layer()
    if folder not in layers:
        raise AssertionError(f"{module}: folder degflow/{folder}/ has no layer in tests/test_layering.py LAYERS")
    return layers[folder]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_every_module_lies_in_a_layer_folder():
    for module in _modules():
        _layer(module)


def test_the_top_of_the_package_is_folders():
    tops = {p.stem for p in PACKAGE.glob("*.py")}
    assert tops == {"__init__", "__main__", "_moved"}, tops
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(_folder_layer())


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_import_only_their_own_or_lower_layers(module):
    path = _modules()[module]
    for target in _imports(path, module):
        assert _layer(target) <= _layer(module), (
            f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})")


def test_jobs_are_independent_and_generation_imports_no_job():
    for module, path in _modules().items():
        targets = _imports(path, module)
        if _within(module, "degflow.generation"):
            assert not [t for t in targets if _layer(t) > 3], module
        for job in SEPARATE_JOBS:
            if _within(module, job):
                others = [j for j in SEPARATE_JOBS if j != job]
                assert not [t for t in targets if any(_within(t, o) for o in others)], module


def test_the_checker_sees_imports_inside_functions():
    """The parser itself: an import inside a function counts."""
    source = PACKAGE / "generation" / "synthesizer.py"
    assert "degflow.core.solvers" in _imports(source, "degflow.generation.synthesizer")
    lazy = PACKAGE / "cli" / "synthesize.py"                   # imports the job inside _synthesize
    assert "degflow.jobs.lr_dataset" in _imports(lazy, "degflow.cli.synthesize")


def test_the_documented_layer_table_is_this_one():
    """docs/ARCHITECTURE.md's layer table lists exactly the folders of :data:`LAYERS`, per layer."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| ([^|]+) \|", text, flags=re.M)
    documented = {int(n): tuple(re.findall(r"`(\w+)/`", folders)) for n, folders in rows}
    assert documented == {n: folders for n, (folders, _) in LAYERS.items()}


def test_the_package_imports_nothing_above_it():
    """Library code never imports the experiments, the tests or the top-level scripts (they sit above it)."""
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                assert name.split(".")[0] not in ("experiments", "tests", "train", "synthesize"), (module, name)
