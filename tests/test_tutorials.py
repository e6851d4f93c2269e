"""Every tutorial runs from its first cell to its last on the current code.

The notebooks run with ``SCSALIENT_TUTORIAL_QUICK=1`` (a few epochs on a few hundred cells)
and find their data the documented way (``SCSALIENT_DATA``, here the shared data folder). A
cell that raises fails the test with the cell and its traceback. The stored outputs are not
compared: they come from full runs (``make tutorials``).

One kernel runs all notebooks, its namespace reset before each: importing scanpy, umap and
scsalient and compiling umap's numba functions take most of a quick run, and are paid once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
#: seconds one cell may take in quick mode before the test fails
CELL_TIMEOUT = 300
#: the environment of the kernel: quick mode, one thread per library (as the test suite)
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def test_every_tutorial_is_collected():
    assert {path.stem for path in NOTEBOOKS} >= {"moduleae", "nact_unsupervised", "sctab", "translator"}


@pytest.fixture(scope="module")
def kernel(shared_data: Path):
    """One started python3 kernel in ``tutorials/`` with quick mode and the shared data."""
    env = dict(os.environ, SCSALIENT_TUTORIAL_QUICK="1", SCSALIENT_DATA=str(shared_data))
    env.update(dict.fromkeys(THREADS, "1"))
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(TUTORIALS), env=env)
    yield manager
    manager.shutdown_kernel(now=True)


def _reset_cell() -> nbformat.NotebookNode:
    """A first cell that empties the namespace left by the previous notebook."""
    return nbformat.v4.new_code_cell('get_ipython().run_line_magic("reset", "-f")')


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_tutorial_runs(path: Path, kernel) -> None:
    notebook = nbformat.read(path, as_version=4)
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "SCSALIENT_TUTORIAL_QUICK" in first_code.source, (
        f"{path.name}: the first code cell must read SCSALIENT_TUTORIAL_QUICK (the test budget)"
    )
    notebook.cells.insert(0, _reset_cell())
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT, allow_errors=False)
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
