"""Fixtures shared by every test; plain helper functions live in ``tests/helpers.py``."""

import os
import urllib.error
import urllib.request
from typing import List

import pytest
import torch

from recbole_elastic import compat

from tests.helpers import write_tiny_dataset

# Tests drive RecBole directly too (Interaction, Trainer), as the plugin's entry points do after compat.apply().
compat.apply()

# One torch thread in the test process and in the processes it starts (unless OMP_NUM_THREADS says otherwise): the
# tests' tensors are tiny, and on a busy 2-core machine a second OpenMP thread spin-waits for the other core (the
# model tests took 165 s instead of 6 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_data(tmp_path, monkeypatch) -> str:
    """A tiny generated dataset named 'tiny'; the test runs in tmp_path so RecBole's log folders land there."""
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(str(tmp_path / "data"))


@pytest.fixture
def no_network(monkeypatch) -> List[str]:
    """Every ``urllib.request.urlopen`` (RecBole's downloads) fails as without a network; returns the URLs tried."""
    tried: List[str] = []

    def unreachable(url, *args, **kwargs):
        tried.append(url if isinstance(url, str) else url.full_url)
        raise urllib.error.URLError("[Errno 101] Network is unreachable (test: no network)")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    return tried
