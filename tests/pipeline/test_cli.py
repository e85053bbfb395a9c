"""The command line: one clear message (exit status 2) for a missing dataset or an unknown model; resume."""

import glob
import json
import os
import subprocess
import sys

import pytest

from recbole_elastic.cli import format_metrics, main
from recbole_elastic.quick_start import run

from tests.helpers import REPO_ROOT, cli_args, run_cli_expecting_error, tiny_run_config

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
    assert f"ELASTIC on tiny (1 epochs (1..1) after resuming from {first['model_file']}" in out


def test_a_sweeps_command_with_a_checkpoint_resumes_that_run_into_its_output_dir(tiny_data, tmp_path, capsys):
    # ml1m_trial.sh's pattern: the trial's own command (one model, one seed, --output_dir) plus --checkpoint.
    # --seeds=07 is seed 7: the check compares seeds as integers, not as the text typed.
    command = ["--model=ELASTIC", "--seeds=07", *cli_args(tiny_data)]
    assert main([*command, f"--output_dir={tmp_path / 'first'}"]) == 0
    with open(tmp_path / "first" / "results.json", encoding="utf-8") as f:
        first = json.load(f)["rows"][0]["runs"][0]
    capsys.readouterr()
    # A folder with results keeps them: refused before any training.
    err = run_cli_expecting_error(
        capsys, [*command, f"--output_dir={tmp_path / 'first'}", f"--checkpoint={first['model_file']}"]
    )
    assert f"--output_dir={tmp_path / 'first'} already holds results" in err
    resumed_dir = tmp_path / "resumed"
    assert main([*command, "--epochs=3", f"--output_dir={resumed_dir}", f"--checkpoint={first['model_file']}"]) == 0
    out = capsys.readouterr().out
    # The repeated settings (typed as text) are the checkpoint's own: only the new --epochs is listed.
    assert "Resuming ELASTIC with settings changed from the checkpoint's: epochs: 1 -> 3 (command line)\n" in out
    assert f"ELASTIC on tiny (2 epochs (1..2) after resuming from {first['model_file']}" in out
    with open(resumed_dir / "results.json", encoding="utf-8") as f:
        result = json.load(f)
    assert result["resumed_from"] == {"checkpoint": first["model_file"], "first_epoch": 1}
    assert result["seeds"] == [7] and result["models"] == ["ELASTIC"]
    (run,) = result["rows"][0]["runs"]
    assert run["seed"] == 7 and run["first_epoch"] == 1 and run["epochs"] == 2
    assert run["model_file"] != first["model_file"]  # a resumed run writes its own checkpoint
    assert f"checkpoint: {run['model_file']}" in out
    # The file holds the printed run: the same test metrics, to the printed precision.
    assert f"test: {format_metrics(run['test_result'])}" in out
    assert result["rows"][0]["test"]["ndcg@10"]["mean"] == run["test_result"]["ndcg@10"]
    with open(resumed_dir / "results.md", encoding="utf-8") as f:
        assert f"Resumed from {first['model_file']} at epoch 1" in f.read()


@pytest.mark.parametrize(
    "option, value, own",
    [
        ("--seeds", "8", "7"),
        ("--seeds", "7,8", "7"),
        ("--model", "LinRec", "ELASTIC"),
        ("--dataset", "ml-100k", "tiny"),
    ],
)
def test_a_checkpoint_refuses_a_model_dataset_or_seed_that_is_not_its_own(tiny_data, capsys, option, value, own):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    err = run_cli_expecting_error(capsys, [f"--checkpoint={first['model_file']}", f"{option}={value}"])
    assert f"--checkpoint resumes one run: ELASTIC on tiny, seed 7; {option}={value} names another" in err
    assert f"Remove {option} or make it {own}." in err


def test_a_one_epoch_run_prints_a_short_console_and_logs_everything(tiny_data):
    args = [arg for arg in cli_args(tiny_data) if not arg.startswith("--show_progress")]  # the default console
    process = run_cli(*args, cwd=os.getcwd())
    assert process.returncode == 0, process.stderr[-2000:]
    lines = (process.stdout + process.stderr).split("\n")
    assert len(lines) <= 30, lines
    console = process.stdout + process.stderr
    assert "epoch 0: train loss" in console and "valid mrr@10" in console
    assert "gpu_id" not in console and "FutureWarning" not in console  # the config dump and warnings: log only
    assert "ELASTIC on tiny (1 epochs, 12224 parameters, cpu)" in process.stdout
    log_file = max(glob.glob(os.path.join("log", "ELASTIC", "*.log")), key=os.path.getmtime)
    with open(log_file, encoding="utf-8") as f:
        log = f.read()
    assert "use_gpu = False" in log and "FutureWarning" in log and "epoch 0: train loss" in log

    verbose = run_cli(*args, "--verbose", cwd=os.getcwd())
    assert verbose.returncode == 0 and "gpu_id" in verbose.stderr


def test_a_resume_lists_the_settings_a_config_file_changes_and_refuses_another_seed(tiny_data, tmp_path, capsys):
    # Config files sit above the checkpoint's settings: repeating a trial's config file without its command-line
    # flags would quietly undo them, so the resume says what changed before it trains.
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1, learning_rate=0.002))
    config_file = tmp_path / "trial.yaml"
    config_file.write_text("learning_rate: 0.001\ntrain_batch_size: 64\n")  # the batch size is the run's own
    command = [f"--checkpoint={first['model_file']}", f"--config_files={config_file}", "--epochs=2"]
    assert main(command) == 0
    out = capsys.readouterr().out
    changed = "epochs: 1 -> 2 (command line); learning_rate: 0.002 -> 0.001 (config files)"
    assert f"Resuming ELASTIC with settings changed from the checkpoint's: {changed}\n" in out
    err = run_cli_expecting_error(capsys, [f"--checkpoint={first['model_file']}", "--seed=8"])
    assert "--checkpoint resumes one run: ELASTIC on tiny, seed 7; seed: 8 (command line) names another." in err
    assert "Remove it or make it 7." in err
