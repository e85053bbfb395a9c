"""Saved checkpoints evaluate to exactly the metrics their run reported."""

from recbole_elastic.cli import main
from recbole_elastic.evaluate import evaluate_checkpoint
from recbole_elastic.quick_start import run

from tests.helpers import run_cli_expecting_error, tiny_run_config


def test_eval_only_reproduces_the_test_metrics_exactly(tiny_data, capsys):
    trained = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    evaluated = evaluate_checkpoint(trained["model_file"])
    assert evaluated["test_result"] == trained["test_result"]
    assert main(["--eval_only", f"--checkpoint={trained['model_file']}"]) == 0
    assert "test: recall@10:" in capsys.readouterr().out


def test_eval_only_needs_an_existing_checkpoint(tmp_path, capsys):
    err = run_cli_expecting_error(capsys, ["--eval_only", f"--checkpoint={tmp_path / 'none.pth'}"])
    assert "Checkpoint file not found" in err
