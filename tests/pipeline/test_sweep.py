"""Multi-model sweeps: one protocol, per-model overrides, seeds, a results table in three formats."""

import csv
import itertools
import json
import math
import os
import statistics

import pytest
import yaml

import recbole.trainer.trainer as recbole_trainer

import recbole_elastic.trainer as plugin_trainer
from recbole_elastic.cli import main
from recbole_elastic.config import load_config_files
from recbole_elastic.sweep import run_sweep

from tests.helpers import assert_metrics_match_the_checkpoint, tiny_run_config


def read_outputs(output_dir):
    with open(os.path.join(output_dir, "results.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as f:
        result = json.load(f)
    with open(os.path.join(output_dir, "results.md"), encoding="utf-8") as f:
        markdown = f.read()
    return rows, result, markdown


def two_seed_paired_p_value(first, other):
    """Two-sided paired t-test over two pairs, by hand: t = mean(d) / (sd(d) / sqrt(2)) on the differences d,
    and a t distribution with 1 degree of freedom is Cauchy, so p = 1 - 2 atan(|t|) / pi."""
    differences = [a - b for a, b in zip(first, other)]
    t = statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(2))
    return 1 - 2 * math.atan(abs(t)) / math.pi


def set_checkpoint_clock(monkeypatch, clock):
    """Checkpoints are named ``<model>-...-<local time to the second>.pth``: the trainers read ``clock()`` instead."""
    for module in (recbole_trainer, plugin_trainer):
        if hasattr(module, "get_local_time"):
            monkeypatch.setattr(module, "get_local_time", clock)


def test_three_model_sweep_with_seeds_writes_csv_json_and_markdown(tiny_data, tmp_path, monkeypatch):
    # A distinct clock per run, so that each seed's metrics are checked against its own checkpoint.
    ticks = itertools.count()
    set_checkpoint_clock(monkeypatch, lambda: f"run{next(ticks)}")
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump({"model_overrides": {"SASRec": {"n_layers": 1}}}))
    output_dir = str(tmp_path / "out")
    result = run_sweep(
        ["ELASTIC", "SASRec", "LinRec"],
        "tiny",
        [1, 2],
        output_dir,
        load_config_files([str(config_file)]),
        tiny_run_config(tiny_data),
    )
    rows, saved, markdown = read_outputs(output_dir)

    assert [row["model"] for row in rows] == ["ELASTIC", "SASRec", "LinRec"]
    assert all(row["status"] == "ok" for row in rows)
    for column in ("ndcg@10_mean", "ndcg@10_std", "best_valid", "epochs", "seconds_per_epoch", "params", "p_value"):
        assert column in rows[0], column
    assert rows[0]["p_value"] == ""  # the reference model is not tested against itself
    per_seed = {}  # model -> each seed's test mrr@10
    for row, saved_row in zip(rows, saved["rows"]):
        runs = saved_row["runs"]
        for run in runs:  # each seed's reported metrics are its own checkpoint's
            assert_metrics_match_the_checkpoint(run["test_result"], run["model_file"])
        ndcg = [run["test_result"]["ndcg@10"] for run in runs]
        assert float(row["ndcg@10_mean"]) == pytest.approx(statistics.fmean(ndcg), rel=1e-9)
        assert float(row["ndcg@10_std"]) == pytest.approx(statistics.stdev(ndcg), rel=1e-9)
        assert float(row["epochs"]) == 1 and int(row["params"]) > 0
        per_seed[row["model"]] = [run["test_result"]["mrr@10"] for run in runs]
    for row in rows[1:]:  # two seeds: paired test against ELASTIC on RecBole's default valid_metric
        expected = two_seed_paired_p_value(per_seed["ELASTIC"], per_seed[row["model"]])
        assert float(row["p_value"]) == pytest.approx(expected, rel=1e-6)
    assert saved["seeds"] == [1, 2] and len(saved["rows"][1]["runs"]) == 2
    assert [run["seed"] for run in saved["rows"][0]["runs"]] == [1, 2]
    # SASRec and LinRec have the same layers; the per-model override gave SASRec 1 layer instead of 2
    assert result["rows"][1]["params"] < result["rows"][2]["params"]
    header = markdown.splitlines()[0]
    assert (
        header.startswith("| model | recall@10 |") and "p vs ELASTIC (mrr@10)" in header
    )  # RecBole's default valid_metric
    assert markdown.count("*") >= 5  # one best mark per metric column
    assert len([line for line in markdown.splitlines() if line.startswith("| ")]) == 4


def test_a_failing_model_is_a_failed_row_and_the_others_still_run(tiny_data, tmp_path, capsys):
    config_file = tmp_path / "sweep.yaml"
    config_file.write_text(yaml.safe_dump({"model_overrides": {"ELASTIC": {"hidden_act": "mish"}}}))
    output_dir = str(tmp_path / "out")
    overrides = {key: str(value) for key, value in tiny_run_config(tiny_data).items() if key != "load_col"}
    argv = ["--model=ELASTIC,LinRec", "--dataset=tiny", f"--config_files={config_file}", f"--output_dir={output_dir}"]
    argv += [f"--{key}={value}" for key, value in overrides.items()]
    argv.append("--load_col={'inter': ['user_id', 'item_id', 'timestamp']}")
    assert main(argv) == 1  # a failed model makes the exit status non-zero

    rows, saved, markdown = read_outputs(output_dir)
    assert [row["status"] for row in rows] == ["failed", "ok"]
    assert "hidden_act" in rows[0]["error"]
    assert "failed: ConfigError" in markdown
    (linrec_run,) = saved["rows"][1]["runs"]
    assert float(rows[1]["ndcg@10_mean"]) == pytest.approx(linrec_run["test_result"]["ndcg@10"], rel=1e-9)
    assert_metrics_match_the_checkpoint(linrec_run["test_result"], linrec_run["model_file"])
    assert "| LinRec |" in capsys.readouterr().out


def test_two_seeds_of_one_model_keep_two_checkpoints(tiny_data, tmp_path, monkeypatch):
    # Checkpoints are named by the local time to the second: a run in the same second as an earlier one gets "-1".
    set_checkpoint_clock(monkeypatch, lambda: "Nov-29-2026_20-16-00")  # both runs start within one second
    result = run_sweep(["LinRec"], "tiny", [1, 2], str(tmp_path / "out"), {}, tiny_run_config(tiny_data))
    first, second = result["rows"][0]["runs"]
    assert first["model_file"] != second["model_file"]
