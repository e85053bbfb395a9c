"""The command line: one clear message (exit status 2) for a missing dataset or an unknown model; resume."""

import os
import subprocess
import sys

from recbole_elastic.cli import main
from recbole_elastic.quick_start import run

from tests.helpers import REPO_ROOT, run_cli_expecting_error, tiny_run_config

SCRIPT = os.path.join(REPO_ROOT, "run_recbole_elastic.py")


def run_cli(*args, cwd):
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )


def test_missing_dataset_gets_one_clear_message(tmp_path):
    process = run_cli("--dataset=no-such-data", f"--data_path={tmp_path}", cwd=tmp_path)
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    message = process.stderr
    assert "Dataset 'no-such-data' not found" in message
    assert os.path.join(str(tmp_path), "no-such-data", "no-such-data.inter") in message
    assert "data_path" in message


def test_known_dataset_that_cannot_be_downloaded_is_explained_and_leaves_nothing(
    tmp_path, capsys, monkeypatch, no_network
):
    # The download fails (no network, whatever the machine has): one message, and the half-made folder is removed.
    monkeypatch.chdir(tmp_path)  # RecBole's log folder
    err = run_cli_expecting_error(capsys, ["--dataset=amazon-beauty", f"--data_path={tmp_path}"])
    url = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets/Amazon_ratings/Amazon_Beauty.zip"
    assert no_network == [url]
    assert f"Dataset 'amazon-beauty' not found: looked for {tmp_path / 'amazon-beauty' / 'amazon-beauty.inter'}" in err
    assert f"downloading it from {url} failed (URLError:" in err
    assert not os.path.exists(tmp_path / "amazon-beauty")


def test_unknown_model_gets_one_clear_message(tmp_path):
    process = run_cli("--model=SASrec", cwd=tmp_path)
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    assert "Unknown model 'SASrec'" in process.stderr
    assert "SASRec" in process.stderr  # the closest known name
    assert "No module named" not in process.stderr


def test_resume_from_the_command_line(tiny_data, capsys):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    assert main([f"--checkpoint={first['model_file']}", "--epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "ELASTIC on tiny (1 epochs" in out and first["model_file"] in out
