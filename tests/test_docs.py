"""The documentation points at things that exist, and the README stays short.

Checked in README.md, docs/*.md and every README.md under experiments/:
- every relative Markdown link (``[text](path)``, ``![alt](path)``) names an existing file or
  folder, relative to the page, and its ``#anchor``, if any, names a heading of the target page;
- every backticked repository path (``degflow/...py``, ``experiments/...``, ``conf/...yaml``,
  ``docs/...md``, ``tests/...py``, relative to the repository root) and every
  ``python -m experiments.<module>`` exists;
- README.md has at most 400 lines, carries .ci/run's test command verbatim, and docs/README.md
  lists every page of docs/.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 400

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
REPO_PATH = re.compile(r"(?<![\w./-])((?:degflow|experiments|conf|docs|tests)/[\w./{},<>*-]*)")
MODULE = re.compile(r"python -m (experiments(?:\.\w+)+)")
# the table of old paths in docs/ARCHITECTURE.md names files that no longer exist, on purpose
MOVED_SECTION = re.compile(r"^## Moved import paths$.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
# what a backticked path must look like to count as a claim that the file exists
PATH_KINDS = {"degflow": (".py", "/"), "experiments": None, "conf": (".yaml", "/"),
              "docs": (".md", ".png", "/"), "tests": (".py", "/")}


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "experiments").rglob("README.md"))]
    return [p for p in pages if p.is_file()]


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def without_code(text: str) -> str:
    """The page with fenced blocks and inline code removed (links inside code are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|!?\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def expand_braces(path: str) -> list[str]:
    """``a/{b,c}.py`` -> ``a/b.py``, ``a/c.py`` (several groups: every combination)."""
    parts = re.split(r"\{([^{}]*)\}", path)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def backticked_paths(text: str) -> list[str]:
    found = []
    text = MOVED_SECTION.sub("", FENCE.sub("", text))
    for _, code in INLINE_CODE.findall(text):
        for path in REPO_PATH.findall(code):
            path = path.rstrip(".,")
            if any(c in path for c in "<>*") or "..." in path:
                continue  # a pattern (conf/data/<option>.yaml), not a file
            ends = PATH_KINDS[path.split("/", 1)[0]]
            if ends is not None and not path.endswith(ends):
                continue  # e.g. `degflow/` prose, an output file name under docs/
            found.extend(expand_braces(path))
    return found


def test_pages_exist():
    names = {page_id(p) for p in doc_pages()}
    assert {"README.md", "docs/README.md"} <= names, f"expected README.md and docs/README.md, got {sorted(names)}"


@pytest.mark.parametrize("page", doc_pages(), ids=page_id)
def test_relative_links_point_to_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(without_code(page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {page_id(file)}")
    assert not broken, f"{page_id(page)}: broken links:\n  " + "\n  ".join(broken)


@pytest.mark.parametrize("page", doc_pages(), ids=page_id)
def test_backticked_repository_paths_and_experiment_modules_exist(page):
    text = page.read_text(encoding="utf-8")
    missing = [p for p in backticked_paths(text) if not (ROOT / p).exists()]
    for module in MODULE.findall(text):
        as_path = ROOT / Path(*module.split("."))
        if not (as_path.with_suffix(".py").is_file() or (as_path / "__main__.py").is_file()):
            missing.append(f"python -m {module}")
    assert not missing, f"{page_id(page)} names files that do not exist: {missing}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, expected at most {README_MAX_LINES}: move details to a page of docs/")


def test_readme_carries_the_ci_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = 'pip install -e ".[test]" && python -m pytest'
    assert command in ci.splitlines(), f".ci/run no longer runs {command!r}: update this test and the README"
    blocks = [b.group(0) for b in FENCE.finditer((ROOT / "README.md").read_text(encoding="utf-8"))]
    assert any(command in block.splitlines() for block in blocks), (
        f"README.md must show .ci/run's test command {command!r} as a line of a code block")


def test_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(without_code(index))}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert not pages - linked, f"docs/README.md does not list {sorted(pages - linked)}"


@pytest.mark.parametrize(("heading", "anchor"), [
    ("LPIPS weights (offline clusters)", "lpips-weights-offline-clusters"),
    ("Demo data: training's own validation", "demo-data-trainings-own-validation"),
    ("Step time, ours vs the authors' step (CPU)", "step-time-ours-vs-the-authors-step-cpu"),
    ("1. Train: `train.py`", "1-train-trainpy"),
])
def test_slug_follows_githubs_rule(heading, anchor):
    assert slug(heading) == anchor


def test_braces_expand_and_patterns_are_skipped():
    assert expand_braces("degflow/training/{rae,lfm}.py") == ["degflow/training/rae.py", "degflow/training/lfm.py"]
    text = "see `conf/data/<option>.yaml`, `degflow/core/spline.py` and `python -m x --out experiments/a.json`"
    assert backticked_paths(text) == ["degflow/core/spline.py", "experiments/a.json"]
