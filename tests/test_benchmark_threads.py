"""The benchmark fixes and records the thread count of every run (a seed's result depends on it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from report import threads_line
from run import THREAD_VARIABLES, limit_threads


def test_threads_line_counts_runs_by_thread_count():
    runs = [{"threads": 1}, {"threads": 1}, {"threads": 2}, {}]
    line = threads_line(runs)
    assert "2 run(s) with 1 thread(s)" in line
    assert "1 run(s) with 2 thread(s)" in line
    assert "1 run(s) made before the thread count was recorded" in line
    # nothing recorded: no line rather than a claim
    assert threads_line([{}, {}]) == ""


def test_limit_threads_sets_every_pool(monkeypatch):
    # numba's variable is left alone once numba is loaded (changing it breaks its compiler)
    others = [v for v in THREAD_VARIABLES if v != "NUMBA_NUM_THREADS"]
    for variable in others:
        monkeypatch.setenv(variable, "3")
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1
        assert all(os.environ[variable] == "1" for variable in others)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="at least 1"):
        limit_threads(0)


def test_limit_threads_after_numba_compiles():
    # scanpy imports numba before the benchmark limits its threads; numba must still compile
    # (in a fresh process without numba's variable, as in a plain benchmark run)
    pytest.importorskip("numba")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import numba; from run import limit_threads; "
        "limit_threads(1); f = numba.njit(lambda a, b: a + b); assert f(1, 2) == 3; "
        "assert numba.get_num_threads() == 1; "
        # torch, imported after, takes its thread count from the variables (and is not imported
        # by limit_threads itself, so that a peer's peak memory does not include it)
        "assert 'torch' not in sys.modules; import torch; assert torch.get_num_threads() == 1"
    )
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    done = subprocess.run([sys.executable, "-c", script, bench], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
