"""Saved checkpoints evaluate to exactly the metrics their run reported, and under ``eval_exclude_history`` to
the ranking without each user's input items."""

import json
import os

import pytest
import torch

from recbole_elastic.cli import main
from recbole_elastic.errors import ConfigError
from recbole_elastic.evaluate import evaluate_checkpoint, held_out_ranks, read_test_ranks
from recbole_elastic.quick_start import load_data_and_model, run
from recbole_elastic.sweep import run_sweep

from tests.helpers import assert_metrics_follow_from_ranks, metrics_from_ranks, run_cli_expecting_error, tiny_run_config

EXCLUDE_HISTORY = {"eval_exclude_history": True}


@pytest.fixture
def trained_causal(tiny_data) -> str:
    """The checkpoint of a tiny CausalSASRec run (dot-product scores over every item)."""
    return run("CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data, epochs=2))["model_file"]


def test_eval_only_reproduces_the_test_metrics_exactly(tiny_data, capsys):
    trained = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    evaluated = evaluate_checkpoint(trained["model_file"])
    assert evaluated["test_result"] == trained["test_result"]
    assert main(["--eval_only", f"--checkpoint={trained['model_file']}"]) == 0
    assert "test: recall@10:" in capsys.readouterr().out


def test_eval_only_needs_an_existing_checkpoint(tmp_path, capsys):
    err = run_cli_expecting_error(capsys, ["--eval_only", f"--checkpoint={tmp_path / 'none.pth'}"])
    assert "Checkpoint file not found" in err


def ranks_without_input_items(model_file: str):
    """Each test user's 0-based rank among the items outside their input sequence, from the model's raw scores:
    the independent computation ``eval_exclude_history`` must match. A target inside its input is a miss. Keyed by
    user token."""
    config, model, dataset, _, _, test_data = load_data_and_model(model_file)
    model.eval()
    ranks, repeated_targets = {}, 0
    with torch.no_grad():
        for interaction, _, _, _ in test_data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            for row in range(len(interaction)):
                length = int(interaction["item_length"][row])
                inputs = set(interaction["item_id_list"][row, :length].tolist())
                target = int(interaction["item_id"][row])
                user = dataset.id2token("user_id", int(interaction["user_id"][row]))  # a token, as ranks are keyed
                if target in inputs:
                    ranks[user], repeated_targets = scores.shape[1], repeated_targets + 1
                    continue
                candidates = [item for item in range(1, scores.shape[1]) if item not in inputs]
                ranks[user] = sum(bool(scores[row, item] > scores[row, target]) for item in candidates)
    return ranks, repeated_targets


def test_excluding_the_history_ranks_each_target_among_the_items_outside_its_input(trained_causal):
    expected, repeated_targets = ranks_without_input_items(trained_causal)
    assert repeated_targets > 0, "no target repeats an input item: the miss rule is not exercised"
    excluded = held_out_ranks(trained_causal, EXCLUDE_HISTORY)
    assert excluded == expected
    every_item = held_out_ranks(trained_causal)
    assert sum(excluded[user] < every_item[user] for user in every_item) > 0, "no input item outranked a target"

    # The trainer's evaluation (RecBole's metrics) ranks the same way.
    result = evaluate_checkpoint(trained_causal, EXCLUDE_HISTORY)["test_result"]
    for name, value in metrics_from_ranks(expected).items():
        assert abs(result[name] - value) <= 1e-4, (name, result[name], value)


def test_eval_only_takes_evaluation_settings_and_rejects_the_others(trained_causal, capsys):
    assert main(["--eval_only", f"--checkpoint={trained_causal}", "--eval_exclude_history=True"]) == 0
    expected = evaluate_checkpoint(trained_causal, EXCLUDE_HISTORY)["test_result"]
    assert f"ndcg@10: {expected['ndcg@10']:.4f}" in capsys.readouterr().out

    err = run_cli_expecting_error(capsys, ["--eval_only", f"--checkpoint={trained_causal}", "--learning_rate=0.1"])
    assert "only eval_exclude_history, metrics, topk, eval_batch_size can change. Remove learning_rate." in err


def test_eval_exclude_history_is_refused_for_a_general_model(tiny_data):
    config = tiny_run_config(tiny_data, eval_exclude_history=True)
    with pytest.raises(ConfigError, match="eval_exclude_history is for sequential models; BPR is not one"):
        run("BPR", "tiny", config_dict=config)


def test_a_sweep_writes_each_runs_test_ranks_under_both_rules(tiny_data, tmp_path):
    output_dir = str(tmp_path / "out")
    leave_one_out = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}
    settings = tiny_run_config(tiny_data, epochs=2, eval_args=leave_one_out)
    run_sweep(["CausalSASRec", "BPR"], "tiny", [7], output_dir, {}, settings)
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as f:
        causal, general = (row["runs"][0] for row in json.load(f)["rows"])
    assert "test_ranks" not in causal, "the ranks belong in their own file, not in results.json"
    assert causal["test_ranks_file"] == "test-ranks-CausalSASRec-seed7.csv"
    ranks = read_test_ranks(os.path.join(output_dir, causal["test_ranks_file"]))

    # RecBole's rule: the metrics RecBole reported for the run follow from the ranks.
    assert_metrics_follow_from_ranks(causal["test_result"], {user: both[0] for user, both in ranks.items()})
    # Without the input items: the ranks computed from the model's raw scores.
    expected, repeated_targets = ranks_without_input_items(causal["model_file"])
    assert repeated_targets > 0
    assert {user: both[1] for user, both in ranks.items()} == expected

    # A general model has RecBole's rule only.
    general_ranks = read_test_ranks(os.path.join(output_dir, general["test_ranks_file"]))
    assert len(general_ranks) == len(ranks) and all(without is None for _, without in general_ranks.values())
    assert_metrics_follow_from_ranks(general["test_result"], {user: both[0] for user, both in general_ranks.items()})

    # Several test items per user (RecBole's default ratio split for a general model): no ranks, no file.
    assert run("BPR", "tiny", config_dict=tiny_run_config(tiny_data))["test_ranks"] is None
