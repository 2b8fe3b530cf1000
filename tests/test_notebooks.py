"""Every notebook in notebooks/ runs top to bottom in a real Jupyter kernel, on a fresh local root;
and the notebooks are kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat/nbclient (test extra)")


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "versioning", "distributed_writes", "pytorch_training"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    if path.stem == "pytorch_training":
        pytest.importorskip("torch", reason="the PyTorch notebook needs torch (pip install torch==2.13.0)")
    monkeypatch.setenv("HUBDASK_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("HUBDASK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HUBDASK_PROGRESS", "off")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    if path.stem == "quickstart":
        html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
        assert html and "data:image/png;base64," in html[0]["data"]["text/html"]  # the repr's thumbnail
