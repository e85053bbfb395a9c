"""What a user reads on the console: sweep headers, early stopping, the resume summary, no progress bars in a file."""

import glob
import io
import itertools
import logging
import os
import re
import subprocess
import sys

import recbole.trainer.trainer as recbole_trainer

from recbole_elastic.cli import format_metrics, main
from recbole_elastic.config import build_config
from recbole_elastic.quick_start import run

from tests.helpers import REPO_ROOT, cli_args, tiny_run_config
from tests.pipeline.test_cli import run_cli

# The CLI in a fresh process where every validation scores lower than the one before it (training's own scores do
# not make early stopping certain): with stopping_step=0 each run stops after its second validation.
CLI_WITH_FALLING_SCORES = """
import itertools, sys
import recbole.trainer.trainer as recbole_trainer
from recbole_elastic.cli import main
falling = (0.5 / count for count in itertools.count(1))
recbole_trainer.calculate_valid_score = lambda result, metric: next(falling)
sys.exit(main(sys.argv[1:]))
"""


def read_newest_log(model: str) -> str:
    newest = max(glob.glob(os.path.join("log", model, "*.log")), key=os.path.getmtime)
    with open(newest, encoding="utf-8") as f:
        return f.read()


def test_a_sweep_prints_a_header_and_an_early_stop_line_per_run(tiny_data, tmp_path):
    argv = ["--model=LinRec,SASRec", "--seeds=1,2", f"--output_dir={tmp_path / 'out'}"]
    argv += cli_args(tiny_data, epochs=3, stopping_step=0)
    process = subprocess.run(
        [sys.executable, "-c", CLI_WITH_FALLING_SCORES, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: the order a user sees
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    assert process.returncode == 0, process.stdout[-3000:]

    lines = [line for line in process.stdout.splitlines() if line.strip()]
    headers = [i for i, line in enumerate(lines) if re.fullmatch(r"\[\d/4\] \w+ seed \d", line)]
    expected = ["[1/4] LinRec seed 1", "[2/4] LinRec seed 2", "[3/4] SASRec seed 1", "[4/4] SASRec seed 2"]
    assert [lines[i] for i in headers] == expected
    for start, end in zip(headers, headers[1:] + [len(lines)]):  # each run's lines follow its own header
        run_lines = lines[start + 1 : end]
        assert sum("epoch 0: train loss" in line for line in run_lines) == 1, run_lines
        assert sum("epoch 1: train loss" in line for line in run_lines) == 1
        assert not any("epoch 2: train loss" in line for line in run_lines)  # stopped after epoch 1
        stops = [line for line in run_lines if "stopped early" in line]
        assert len(stops) == 1, run_lines
        # this run's first validation scored 0.5 / n, its second less: epoch 0 stays the best
        assert re.search(
            r"stopped early after epoch 1: valid mrr@10 did not improve on epoch 0's 0\.\d{4} in 1 ", stops[0]
        )
    # RecBole's own log line (log file only) agrees on the best epoch
    assert "Finished training, best eval result in epoch 0" in read_newest_log("SASRec")


def test_a_resumed_run_that_never_beats_its_checkpoint_reports_the_checkpoints_metrics(
    tiny_data, capsys, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)  # pytest's handler on the root logger keeps RecBole's from being installed
    first = run("LinRec", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    best = f"best valid (MRR@10 = {first['best_valid_score']:.4f}): {format_metrics(first['best_valid_result'])}"
    assert first["best_valid_result"] and first["best_valid_score"] > 0

    # The checkpoint had reached --epochs: no epoch runs, the restored best is still reported.
    assert main([f"--checkpoint={first['model_file']}", "--epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "(the checkpoint had reached --epochs)" in out and best in out

    # Every resumed epoch validates below the restored best (negative scores): early stopping, and the restored best.
    falling = (0.0 - count for count in itertools.count(1))
    monkeypatch.setattr(recbole_trainer, "calculate_valid_score", lambda result, metric: next(falling))
    assert main([f"--checkpoint={first['model_file']}", "--epochs=4", "--stopping_step=0"]) == 0
    out = capsys.readouterr().out
    assert "1 epochs (1..1) after resuming" in out and best in out
    stop = f"stopped early after epoch 1: valid mrr@10 did not improve on epoch 0's {first['best_valid_score']:.4f}"
    assert any(message.startswith(stop) for message in caplog.messages)  # the console's line
    assert not [message for message in caplog.messages if "best valid" in message and message.endswith("None")]


def test_progress_bars_only_on_a_terminal_unless_asked_for(tiny_data, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def show_progress(**config_dict):
        return build_config("LinRec", "tiny", config_dict={"data_path": tiny_data, **config_dict})["show_progress"]

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file or a pipe, where tqdm's \r redraws pile up
    assert show_progress() is False
    assert show_progress(show_progress=True) is True  # the user's choice wins
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show_progress() is True  # RecBole's default on a terminal

    # A real run with its output captured (not a terminal): no bar, unless --show_progress=True.
    args = [arg for arg in cli_args(tiny_data) if not arg.startswith("--show_progress")]
    quiet = run_cli(*args, cwd=os.getcwd())
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "%|" not in quiet.stdout + quiet.stderr and "Train " not in quiet.stderr  # tqdm's bar: "Train 0: 40%|██"
    assert "epoch 0: train loss" in quiet.stderr
    bars = run_cli(*args, "--show_progress=True", cwd=os.getcwd())
    assert bars.returncode == 0 and "%|" in bars.stderr and "Train " in bars.stderr
