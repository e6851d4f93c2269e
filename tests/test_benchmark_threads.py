"""The benchmark fixes and records the thread count of every run (a seed's result depends on it)."""

import os
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
    for variable in THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    before = torch.get_num_threads()
    try:
        limit_threads(1)
        assert torch.get_num_threads() == 1
        assert all(os.environ[variable] == "1" for variable in THREAD_VARIABLES)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="at least 1"):
        limit_threads(0)
