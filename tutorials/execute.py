"""Execute the tutorials and store their outputs in the notebooks (``make tutorials``).

Usage::

    python tutorials/execute.py                       # every notebook, full run, in place
    python tutorials/execute.py sctab.ipynb           # one notebook
    python tutorials/execute.py --quick --no-write    # the test suite's budget, outputs discarded

Each notebook runs in a fresh kernel with this folder as working directory, so the data are
found as the notebooks document it: the folder named by ``SCSALIENT_DATA``, else
``shared/data`` beside the repository checkout.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def execute(path: Path, quick: bool = False, timeout: int = 3600) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` in a fresh kernel and return the notebook.

    Parameters
    ----------
    path
        The notebook.
    quick
        Set ``SCSALIENT_TUTORIAL_QUICK=1`` for the kernel (a few epochs on a few hundred cells).
    timeout
        Seconds a single cell may run.

    Raises
    ------
    nbclient.exceptions.CellExecutionError
        If a cell raises; the message holds the cell and its traceback.
    """
    notebook = nbformat.read(path, as_version=4)
    previous = os.environ.get("SCSALIENT_TUTORIAL_QUICK")
    os.environ["SCSALIENT_TUTORIAL_QUICK"] = "1" if quick else "0"
    try:
        client = NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute()
    finally:
        if previous is None:
            del os.environ["SCSALIENT_TUTORIAL_QUICK"]
        else:
            os.environ["SCSALIENT_TUTORIAL_QUICK"] = previous
    return notebook


def main() -> None:
    """Execute the notebooks named on the command line (default: all of this folder)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="set SCSALIENT_TUTORIAL_QUICK=1")
    parser.add_argument("--no-write", action="store_true", help="do not store the outputs")
    args = parser.parse_args()
    paths = [HERE / p.name if not p.exists() else p for p in args.notebooks] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        notebook = execute(path.resolve(), quick=args.quick)
        if not args.no_write:
            nbformat.write(notebook, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
