"""Bad input gets one clear error and exit status 2, leaves no half-written output; resume and eval-only work."""

import os
import random

import pytest
import torch

from recbole_elastic.cli import main
from recbole_elastic.compat import load_checkpoint
from recbole_elastic.errors import TrainingDivergedError
from recbole_elastic.model import ELASTIC
from recbole_elastic.quick_start import build_config, evaluate_checkpoint, run
from recbole_elastic.utils import atomic_path, atomic_write

from conftest import tiny_run_config


def cli_args(data_path, dataset="tiny", **extra):
    config = {**tiny_run_config(data_path), **extra}
    config.pop("load_col")
    args = [f"--dataset={dataset}", *(f"--{key}={value}" for key, value in config.items())]
    return args + ["--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"]


def run_cli_expecting_error(capsys, args):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def write_inter(data_path, name, text):
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write(text)


def no_checkpoints(data_path):
    saved = os.path.join(data_path, "saved")
    return not os.path.isdir(saved) or not os.listdir(saved)


def test_missing_column(tiny_data, capsys):
    write_inter(tiny_data, "nocol", "user_id:token\titem_id:token\n1\t2\n1\t3\n")
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "nocol"))
    assert "nocol.inter" in err and "['timestamp']" in err and "load_col" in err
    assert no_checkpoints(tiny_data)


def test_non_numeric_timestamp(tiny_data, capsys):
    rows = "".join(f"{u}\t{i}\tyesterday\n" for u in range(1, 5) for i in range(1, 6))
    write_inter(tiny_data, "badtime", "user_id:token\titem_id:token\ttimestamp:float\n" + rows)
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "badtime"))
    assert "Could not read dataset 'badtime'" in err and "timestamp:float" in err and "header type" in err
    assert no_checkpoints(tiny_data)


def test_wrong_separator(tiny_data, capsys):
    rows = "".join(f"{u},{i},{u * 10 + i}\n" for u in range(1, 5) for i in range(1, 6))
    write_inter(tiny_data, "commas", "user_id:token,item_id:token,timestamp:float\n" + rows)
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "commas"))
    assert "commas.inter" in err and "single column" in err and "separated by ','" in err
    assert "field_separator" in err


def test_dataset_left_empty_by_filtering(tiny_data, capsys):
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, user_inter_num_interval="[1000,inf)"))
    assert "Filtering left 0 interactions" in err and "user_inter_num_interval" in err
    assert no_checkpoints(tiny_data)


def test_misspelled_key_names_the_closest_known_key(tiny_data, capsys):
    err = run_cli_expecting_error(capsys, cli_args(tiny_data) + ["--epoch=5"])
    assert "Unknown config key `epoch`" in err and "Did you mean `epochs`?" in err


def test_unknown_key_in_a_config_file(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("learnin_rate: 0.01\n")
    err = run_cli_expecting_error(capsys, cli_args(tiny_data) + [f"--config_files={config_file}"])
    assert "`learnin_rate`" in err and str(config_file) in err and "`learning_rate`" in err


def test_ce_loss_with_negative_sampling_conflicts(tiny_data, capsys):
    args = cli_args(tiny_data) + ["--train_neg_sample_args={'distribution': 'uniform', 'sample_num': 1}"]
    err = run_cli_expecting_error(capsys, args)
    assert "loss_type=CE" in err and "train_neg_sample_args" in err
    assert no_checkpoints(tiny_data)


def test_nan_loss_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tiny_data, monkeypatch):
    from recbole.trainer import Trainer

    state = {"epoch": 0}
    train_epoch, calculate_loss = Trainer._train_epoch, ELASTIC.calculate_loss

    def tracking_epoch(self, train_data, epoch_idx, *args, **kwargs):
        state["epoch"] = epoch_idx
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    def diverging_loss(self, interaction):  # epoch 0 trains normally, epoch 1's loss is NaN
        loss = calculate_loss(self, interaction)
        return loss * float("nan") if state["epoch"] >= 1 else loss

    monkeypatch.setattr(Trainer, "_train_epoch", tracking_epoch)
    monkeypatch.setattr(ELASTIC, "calculate_loss", diverging_loss)
    config = tiny_run_config(tiny_data, epochs=3)
    with pytest.raises(TrainingDivergedError) as error:
        run("ELASTIC", "tiny", config_dict=config)
    message = str(error.value)
    assert "became NaN in epoch 1" in message and "last good checkpoint is kept" in message
    kept = message.split("kept: ")[1].split(".pth")[0] + ".pth"
    checkpoint = load_checkpoint(kept)
    assert checkpoint["epoch"] == 0  # written after the good epoch, intact and loadable
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not [f for f in os.listdir(os.path.dirname(kept)) if f.endswith(".partial")]


def test_resume_continues_after_the_saved_epoch(tiny_data):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    assert load_checkpoint(first["model_file"])["epoch"] == 0
    resumed = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=3), checkpoint=first["model_file"])
    assert resumed["epochs"] == 2  # epochs 1 and 2: epoch 0 is not trained again
    assert resumed["model_file"] == first["model_file"]


def test_resume_from_the_command_line(tiny_data, capsys):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    assert main([f"--checkpoint={first['model_file']}", "--epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "ELASTIC on tiny (1 epochs" in out and first["model_file"] in out


def test_eval_only_reproduces_the_test_metrics_exactly(tiny_data, capsys):
    trained = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    evaluated = evaluate_checkpoint(trained["model_file"])
    assert evaluated["test_result"] == trained["test_result"]
    assert main(["--eval_only", f"--checkpoint={trained['model_file']}"]) == 0
    assert "test: recall@10:" in capsys.readouterr().out


def test_eval_only_needs_an_existing_checkpoint(tmp_path, capsys):
    err = run_cli_expecting_error(capsys, ["--eval_only", f"--checkpoint={tmp_path / 'none.pth'}"])
    assert "Checkpoint file not found" in err


def write_amazon_books(data_path, n_users=40, n_items=30, seed=0):
    """A small file with amazon-books' schema: user_id, item_id, rating, timestamp."""
    rng = random.Random(seed)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(n_users):
        for step in range(20):
            rating = rng.choice([1, 2, 3, 4, 5, 5])
            lines.append(f"A{user:04d}\tB{rng.randrange(n_items):05d}\t{rating}.0\t{1_300_000_000 + user * 1000 + step}")
    write_inter(data_path, "amazon-books", "\n".join(lines) + "\n")
    return len(lines) - 1


def test_amazon_books_configuration_on_a_synthetic_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_path = str(tmp_path / "data")
    total = write_amazon_books(data_path)
    config_dict = {key: value for key, value in tiny_run_config(data_path).items() if key not in ("load_col",)}
    config_dict["MAX_ITEM_LIST_LENGTH"] = 50
    config = build_config("ELASTIC", "amazon-books", config_dict=config_dict)
    assert config["load_col"] == {"inter": ["user_id", "item_id", "rating", "timestamp"]}
    assert config["val_interval"] == {"rating": "[3,inf)"}
    assert config["user_inter_num_interval"] == "[10,inf)"
    result = run("ELASTIC", "amazon-books", config_dict=config_dict)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    from recbole.data import create_dataset

    kept = create_dataset(config).inter_num
    assert 0 < kept < total  # ratings below 3 were filtered out


def test_amazon_books_offline_without_files_gets_the_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli_expecting_error(capsys, ["--dataset=amazon-books", f"--data_path={tmp_path}"])
    assert "Dataset 'amazon-books' not found" in err or "downloading" in err
    assert not (tmp_path / "amazon-books").exists()




def test_config_file_epochs_win_over_the_quick_start_budget(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "budget.yaml"
    config_file.write_text("epochs: 2\n")
    args = [arg for arg in cli_args(tiny_data) if not arg.startswith("--epochs=")]
    assert main(args + [f"--config_files={config_file}"]) == 0
    assert "ELASTIC on tiny (2 epochs" in capsys.readouterr().out  # not the CLI's default budget of 8


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
