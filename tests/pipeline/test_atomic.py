"""Atomic writes: a crash mid-write leaves the previous file; claimed names are never shared."""

import os
import signal
import subprocess
import sys

import pytest

from recbole_elastic.atomic import atomic_path, atomic_write, claim_new_file

from tests.helpers import REPO_ROOT, cli_args, kill_once_training_starts, write_tiny_dataset


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


# Killed (SIGTERM) mid-write in a fresh interpreter, since Python's default for SIGTERM would end pytest itself.
KILLED_MID_WRITE = """
import os, signal, sys, time
from recbole_elastic.atomic import atomic_path, cleanup_on_sigterm
before = signal.getsignal(signal.SIGTERM)
try:
    with cleanup_on_sigterm(), atomic_path(sys.argv[1]) as temporary, open(temporary, "w") as f:
        f.write("half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # the signal's exception ends this
finally:
    print("handler restored", signal.getsignal(signal.SIGTERM) is before)
"""


def test_a_write_killed_midway_leaves_the_previous_file_and_no_partial_one(tmp_path):
    target = tmp_path / "model.pth"
    target.write_text("the last complete checkpoint")
    process = subprocess.run(
        [sys.executable, "-c", KILLED_MID_WRITE, str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    assert process.returncode == 128 + signal.SIGTERM, process.stderr[-2000:]
    assert "handler restored True" in process.stdout
    assert "Traceback" not in process.stderr
    assert os.listdir(tmp_path) == ["model.pth"]
    assert target.read_text() == "the last complete checkpoint"


def test_a_run_killed_before_its_first_save_leaves_no_empty_checkpoint_name(tmp_path):
    """The CLI claims its checkpoint name (an empty file) when training starts; killed before anything is saved,
    it removes the claim instead of leaving an empty ``.pth`` that looks like a checkpoint."""
    data_path = write_tiny_dataset(str(tmp_path))
    returncode, stderr = kill_once_training_starts(cli_args(data_path, model="CausalSASRec"), data_path)
    assert returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert os.listdir(os.path.join(data_path, "saved")) == []
