from __future__ import annotations

from types import SimpleNamespace

import psutil
import pytest
import torch

from scsalient.model.base import _memory
from scsalient.model.base._memory import available_memory, check_training_memory


def test_host_memory_is_what_psutil_reports_available(monkeypatch):
    # psutil's "available" (not total, not free): what new allocations can get without swapping
    fake = SimpleNamespace(available=3 * 2**30 + 5, total=64 * 2**30, free=2**30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: fake)
    assert available_memory("cpu") == 3 * 2**30 + 5
    assert available_memory(torch.device("cpu")) == 3 * 2**30 + 5


def test_host_memory_on_this_machine_is_positive_and_below_total():
    free = available_memory()
    assert isinstance(free, int)
    assert 0 < free <= psutil.virtual_memory().total


def test_gpu_memory_comes_from_torch(monkeypatch):
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return 7 * 2**20, 80 * 2**30

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: pytest.fail("host memory read for a GPU"))
    assert available_memory("cuda:0") == 7 * 2**20
    assert asked == [torch.device("cuda:0")]


def test_check_training_memory_compares_with_the_usable_share_of_free_memory(monkeypatch):
    monkeypatch.setattr(psutil, "virtual_memory", lambda: SimpleNamespace(available=1000 * 2**20))
    per_parameter = _memory.BYTES_PER_TRAINED_PARAMETER
    fits = int(0.79 * 1000 * 2**20 / per_parameter)
    check_training_memory(fits, 0)  # 79% of the free memory: fine
    with pytest.raises(MemoryError, match=r"needs about 810 MiB .* only 1000 MiB is free on cpu\. Use less"):
        check_training_memory(int(0.81 * 1000 * 2**20 / per_parameter), 0, hint="Use less.")
