"""notebooks/demo.ipynb runs top to bottom (tiny budget), so it cannot rot."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "demo.ipynb"


def test_demo_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.slow
def test_demo_notebook_executes_top_to_bottom(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("DEGFLOW_DEMO_TRAIN", "1")
    monkeypatch.setenv("DEGFLOW_DEMO_BUDGET", "tiny")
    monkeypatch.setenv("DEGFLOW_DEMO_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("DEGFLOW_CKPT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))        # the kernel imports this checkout's degflow
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # kernel "python3" is ipykernel's native kernel of this interpreter: no registration needed
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4                                 # loss curves, the figure, metric vs scale, crops
    assert any("bicubic" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert (tmp_path / "out" / "lfm" / "checkpoints" / "last.pt").is_file() and (tmp_path / "out" / "model.pt").is_file()
    assert any("detail kept" in o.get("data", {}).get("text/markdown", "") for o in outputs)
