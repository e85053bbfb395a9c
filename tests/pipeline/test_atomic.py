"""Atomic writes: a crash mid-write leaves the previous file; claimed names are never shared."""

import os

import pytest

from recbole_elastic.atomic import atomic_path, atomic_write, claim_new_file


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


def test_claim_new_file_creates_the_first_free_name(tmp_path):
    stem = str(tmp_path / "run")
    (tmp_path / "run-1.pth").write_text("another run's")
    claimed = [claim_new_file(stem, ".pth") for _ in range(3)]
    assert [os.path.basename(path) for path in claimed] == ["run.pth", "run-2.pth", "run-3.pth"]
    assert all(os.path.getsize(path) == 0 for path in claimed)
    assert (tmp_path / "run-1.pth").read_text() == "another run's"
