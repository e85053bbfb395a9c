"""Atomic writes: a crash mid-write leaves the previous file."""

import os

import pytest

from recbole_elastic.atomic import atomic_path, atomic_write


def test_atomic_path_replaces_only_after_a_complete_write(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as temporary, open(temporary, "w") as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    with atomic_path(str(target)):
        pass  # a rank that saves nothing leaves the last file in place
    assert target.read_text() == "old"
    atomic_write(str(target), "new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["result.txt"]
