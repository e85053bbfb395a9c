"""Config keys: unknown keys are named with the closest known key; settings take the documented precedence."""

from recbole_elastic.cli import main
from recbole_elastic.config import build_config, load_config_files, protocol_file, run_settings

from tests.helpers import cli_args, no_checkpoints, run_cli_expecting_error


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


def test_config_file_epochs_win_over_the_quick_start_budget(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "budget.yaml"
    config_file.write_text("epochs: 2\n")
    args = [arg for arg in cli_args(tiny_data) if not arg.startswith("--epochs=")]
    assert main(args + [f"--config_files={config_file}"]) == 0
    assert "ELASTIC on tiny (2 epochs" in capsys.readouterr().out  # not the CLI's default budget of 8


class SavedConfig:
    """What run_settings reads from a checkpoint's Config: the settings the user gave it."""

    external_config_dict = {"epochs": 5, "learning_rate": 0.1, "dropout": 0.3, "nproc": 2, "local_rank": 1}


def test_run_settings_layers_in_the_documented_order():
    files = {"learning_rate": 0.01, "hidden_size": 32, "model_overrides": {"ELASTIC": {"hidden_size": 48}}}
    budget_only = run_settings("ELASTIC", quick_start_budget=True)
    assert budget_only == {"epochs": 8}
    settings = run_settings(
        "ELASTIC",
        files,
        {"hidden_size": 64, "seed": 1},
        quick_start_budget=False,
        resumed_config=SavedConfig(),
        seed=7,
        process={"local_rank": 0, "nproc": 4},
    )
    assert settings == {
        "epochs": 5,  # from the checkpoint: nothing above sets it
        "learning_rate": 0.01,  # the config file wins over the checkpoint
        "dropout": 0.3,
        "hidden_size": 64,  # command line > model_overrides > file
        "seed": 7,
        "local_rank": 0,  # the new process layout, never the checkpoint's
        "nproc": 4,
    }
    assert run_settings("LinRec", files)["hidden_size"] == 32  # another model's overrides do not apply
    assert run_settings("ELASTIC", files)["hidden_size"] == 48
    assert "nproc" not in run_settings("ELASTIC", resumed_config=SavedConfig())


def test_the_shipped_protocol_validates_on_ndcg_with_early_stopping_under_the_users_settings(tiny_data, capsys):
    protocol = load_config_files([protocol_file("loo")])
    assert (
        run_settings("ELASTIC", protocol, quick_start_budget=True)["epochs"] == 300
    )  # not the CLI's 8: it stops early
    settings = run_settings("ELASTIC", protocol, {"epochs": 1, "data_path": tiny_data}, quick_start_budget=True)
    config = build_config("ELASTIC", "tiny", config_dict=settings)
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert (
        config["eval_args"]["mode"] == {"valid": "full", "test": "full"} and config["eval_args"]["group_by"] == "user"
    )
    assert config["valid_metric"] == "NDCG@10" and config["stopping_step"] == 10
    assert config["epochs"] == 1 and "data_path" not in protocol  # the user's settings win; nothing machine-specific

    assert main(cli_args(tiny_data, epochs=1) + ["--protocol=loo"]) == 0
    out = capsys.readouterr().out
    assert "best valid (NDCG@10 = " in out and "test: hit@10: " in out and "ndcg@20: " in out
    err = run_cli_expecting_error(capsys, cli_args(tiny_data) + ["--protocol=LOO"])
    assert "Unknown protocol 'LOO': the plugin ships loo" in err
