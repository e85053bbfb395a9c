"""Fixtures shared by every test; plain helper functions live in ``tests/helpers.py``."""

import pytest

from recbole_elastic import compat

from tests.helpers import write_tiny_dataset

# Tests drive RecBole directly too (Interaction, Trainer), as the plugin's entry points do after compat.apply().
compat.apply()


@pytest.fixture
def tiny_data(tmp_path, monkeypatch) -> str:
    """A tiny generated dataset named 'tiny'; the test runs in tmp_path so RecBole's log folders land there."""
    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(str(tmp_path / "data"))
