"""Every notebook in notebooks/ runs top to bottom as a notebook (nbclient, a real kernel) on small settings
(NOTEBOOK_SMALL=1: synthetic shapes instead of MNIST, fewer steps), offline, and shows its figures inline."""
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # the notebooks in a real kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def test_there_are_the_three_notebooks():
    assert [os.path.basename(p)[:2] for p in NOTEBOOKS] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_and_shows_its_figures(path, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # run the notebook as committed, without its stored outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    folder = os.path.dirname(path)  # where Jupyter starts it; the first cell finds the repository from there
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": folder}}).execute()
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors and len(figures) >= 3, (len(figures), errors)
