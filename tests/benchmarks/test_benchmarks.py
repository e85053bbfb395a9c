"""The benchmark scripts keep working: the efficiency sweep's table and its one claim that holds on any machine
(ELASTIC's inference is several times SASRec's at N=1024), and the paired per-user comparison's numbers."""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
from scipy import stats

from recbole_elastic.evaluate import evaluate_checkpoint, held_out_ranks, write_test_ranks
from recbole_elastic.quick_start import run
from recbole_elastic.sweep import run_sweep

from tests.helpers import REPO_ROOT, tiny_run_config


def test_efficiency_benchmark_at_a_short_and_a_long_length(tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "benchmarks", "efficiency.py"),
        "--lengths",
        "8,1024",
        "--models",
        "ELASTIC,SASRec,LinRec",
        "--n-items",
        "50",
        "--batch-size",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--out",
        str(out),
    ]
    # One thread per measuring process: timings on a shared machine with oversubscribed threads mean nothing.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    points = {(p["model"], p["length"]): p for p in result["points"]}
    assert set(points) == {(m, n) for m in ("ELASTIC", "SASRec", "LinRec") for n in (8, 1024)}
    for point in result["points"]:
        assert point["status"] == "ok", point
        assert point["inference_sequences_per_second"] == pytest.approx(2 / point["inference_seconds"])
    # same layers and sizes: SASRec and LinRec differ only in their attention, which has no parameters of its own
    assert points[("SASRec", 8)]["params"] == points[("LinRec", 8)]["params"]
    ratios = result["summary"]["per_length"]
    assert set(ratios) == {"8", "1024"}
    for length, row in ratios.items():
        elastic, sasrec, linrec = (points[(m, int(length))] for m in ("ELASTIC", "SASRec", "LinRec"))
        rate = "inference_sequences_per_second"
        assert row["inference_speedup_over_sasrec"] == pytest.approx(elastic[rate] / sasrec[rate])
        assert row["inference_speedup_over_linrec"] == pytest.approx(elastic[rate] / linrec[rate])
        step = "train_step_seconds"
        assert row["train_speedup_over_sasrec"] == pytest.approx(sasrec[step] / elastic[step])
        memory = "train_peak_memory_mb"
        assert row["memory_elastic_over_sasrec"] == pytest.approx(elastic[memory] / sasrec[memory])
    # The claims at long sequences (docs/EFFICIENCY.md, batch 16, N=1024: 22x the inference throughput, 13% of memory):
    # SASRec's N x N attention makes it several times slower and hungrier. Measured here at batch 2 on one
    # thread: about 6x and 11%. The margins leave room for a loaded machine, not for a model without the gain.
    assert ratios["1024"]["inference_speedup_over_sasrec"] > 2
    assert ratios["1024"]["memory_elastic_over_sasrec"] < 0.5
    markdown = (out / "results.md").read_text()
    assert "| N | ELASTIC | SASRec | LinRec |" in markdown
    assert "memory ELASTIC/SASRec" in markdown
    assert (out / "efficiency.png").stat().st_size > 1000


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_users_reproduces_each_models_test_metrics(tiny_data, capsys):
    elastic = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    sasrec = run("SASRec", "tiny", config_dict=tiny_run_config(tiny_data))
    paired_users = load_benchmark("paired_users")
    for trained in (elastic, sasrec):
        ranks = held_out_ranks(trained["model_file"])
        assert len(ranks) == 40  # every tiny user has one held-out test item
        per_user = paired_users.per_user_metrics(paired_users.np.array(list(ranks.values())), 10)
        for metric in ("ndcg@10", "hit@10", "mrr@10"):
            assert round(float(per_user[metric].mean()), 4) == trained["test_result"][metric], metric

    assert paired_users.main([elastic["model_file"], sasrec["model_file"], "--bootstrap", "200"]) == 0
    sasrec_row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SASRec")][0]
    cells = [cell.strip() for cell in sasrec_row.strip("|").split("|")]
    difference = sasrec["test_result"]["ndcg@10"] - elastic["test_result"]["ndcg@10"]
    assert abs(float(cells[5]) - difference) <= 1.5e-4
    low, high = (float(x) for x in cells[6].strip("[]").split(","))
    assert low <= float(cells[5]) <= high
    # the paired t-test over the 40 users, by hand: t = mean(d) / (sd(d) / sqrt(n)), two-sided, n - 1 dof
    elastic_ranks, sasrec_ranks = held_out_ranks(elastic["model_file"]), held_out_ranks(sasrec["model_file"])
    differences = [ndcg_at_10(sasrec_ranks[u]) - ndcg_at_10(elastic_ranks[u]) for u in elastic_ranks]
    t = statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(len(differences)))
    assert float(cells[7]) == pytest.approx(2 * stats.t.sf(abs(t), len(differences) - 1), abs=5e-4)


def test_paired_users_ranks_without_the_input_items_when_asked(tiny_data, capsys):
    first = run("CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data))
    second = run("CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data, seed=8))
    paired_users = load_benchmark("paired_users")
    checkpoints = [first["model_file"], second["model_file"], "--bootstrap", "200"]
    assert paired_users.main([*checkpoints, "--exclude_history"]) == 0
    out = capsys.readouterr().out
    assert "ranked without each user's input items" in out
    cells = [cell.strip() for cell in out.splitlines()[-1].strip("|").split("|")]
    excluded = evaluate_checkpoint(second["model_file"], {"eval_exclude_history": True})["test_result"]
    assert abs(float(cells[2]) - excluded["ndcg@10"]) <= 1.5e-4
    assert excluded["ndcg@10"] != second["test_result"]["ndcg@10"], "excluding the inputs changed nothing"


def ndcg_at_10(rank: int) -> float:
    return 1 / math.log2(rank + 2) if rank < 10 else 0.0


def test_paired_users_averages_a_group_of_seeds_per_user(tiny_data, capsys):
    elastic = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    seeds = [run("SASRec", "tiny", config_dict=tiny_run_config(tiny_data, seed=seed)) for seed in (1, 2)]
    paired_users = load_benchmark("paired_users")
    group = ",".join(trained["model_file"] for trained in seeds)
    assert paired_users.main([elastic["model_file"], group, "--bootstrap", "200"]) == 0
    sasrec_row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SASRec")][0]
    cells = [cell.strip() for cell in sasrec_row.strip("|").split("|")]
    # the group's per-user NDCG@10 is the mean over its two runs, so its mean is the mean of their test scores
    seed_mean = statistics.fmean(trained["test_result"]["ndcg@10"] for trained in seeds)
    assert abs(float(cells[2]) - seed_mean) <= 1.5e-4
    assert abs(float(cells[5]) - (seed_mean - elastic["test_result"]["ndcg@10"])) <= 1.5e-4
    # and the paired t-test is over per-user differences from the seed-averaged NDCG@10
    elastic_ranks = held_out_ranks(elastic["model_file"])
    seed_ranks = [held_out_ranks(trained["model_file"]) for trained in seeds]
    differences = [
        statistics.fmean(ndcg_at_10(ranks[u]) for ranks in seed_ranks) - ndcg_at_10(elastic_ranks[u])
        for u in elastic_ranks
    ]
    t = statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(len(differences)))
    assert float(cells[7]) == pytest.approx(2 * stats.t.sf(abs(t), len(differences) - 1), abs=5e-4)


def write_sweep(directory, model, runs):
    """A sweep's results.json with ``runs`` as (seed, best valid, test NDCG@10) triples."""
    os.makedirs(directory)
    rows = [
        {
            "seed": seed,
            "model": model,
            "best_valid_score": valid,
            "valid_curve": [valid],
            "epochs": 1,
            "epoch_seconds": [1.0],
            "model_file": f"{model}-{seed}.pth",
            "test_result": {metric: test for metric in ("ndcg@10", "hit@10", "mrr@10", "ndcg@20", "hit@20", "mrr@20")},
        }
        for seed, valid, test in runs
    ]
    with open(os.path.join(directory, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"rows": [{"runs": rows}]}, f)


def test_ml1m_report_chooses_on_validation_and_pools_the_seeds(tmp_path, capsys):
    write_sweep(tmp_path / "A-lr", "A", [(2020, 0.30, 0.10)])
    write_sweep(tmp_path / "A-dropout", "A", [(2020, 0.40, 0.05)])  # best on validation, worse on test: chosen
    write_sweep(tmp_path / "A-dropout-seeds", "A", [(2021, 0.41, 0.07)])
    write_sweep(tmp_path / "A-dropout-seeds-2022", "A", [(2022, 0.39, 0.09)])  # a seed run in parallel
    write_sweep(tmp_path / "B-defaults", "B", [(2020, 0.20, 0.04)])
    assert load_benchmark("ml1m_report").main(["--results", str(tmp_path), "--reference", "B"]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("|") > 10}
    cells = [cell.strip() for cell in rows["A"].strip("|").split("|")]
    assert cells[1:3] == ["A-dropout", "2020,2021,2022"]
    assert cells[3] == "0.0700 ± 0.0200"  # mean and sample std of 0.05, 0.07, 0.09
    assert cells[-1] == "1.750"  # 0.07 / 0.04


def test_batch_packing_counts_the_same_steps_and_targets_at_every_length(tiny_data, capsys):
    import benchmarks.batch_packing as batch_packing

    argv = ["--dataset", "tiny", "--data_path", tiny_data, "--lengths", "5,10", "--train_batch_size", "64"]
    assert batch_packing.main(argv) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    table = {(int(row[0]), row[1].strip()): row for row in rows}
    assert sorted(table) == [(5, "slots"), (5, "targets"), (10, "slots"), (10, "targets")]
    steps = {key: int(row[3]) for key, row in table.items()}
    mean_targets = {key: int(row[4].split()[0]) for key, row in table.items()}
    assert steps[5, "targets"] == steps[10, "targets"]  # the same steps at both lengths, ...
    assert abs(mean_targets[5, "targets"] - mean_targets[10, "targets"]) <= 1  # ... of the same targets
    assert steps[5, "slots"] > steps[10, "targets"]  # slots: 12 windows of 5 hold fewer real targets than 64
    assert mean_targets[5, "slots"] <= 64 and mean_targets[10, "slots"] <= 60  # 12 x 5 and 6 x 10 slots


def test_eval_time_scores_the_same_and_counts_each_groups_longest_history(tiny_data, tmp_path):
    import benchmarks.eval_time as eval_time

    # One batch of every user at N = 20: padded, 20 positions each; grouped (one group), the longest validation
    # history, all of a user's items but the last two (the tiny dataset's histories are 6 to 14 items).
    with open(os.path.join(tiny_data, "tiny", "tiny.inter"), encoding="utf-8") as f:
        users = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
    counts = {user: users.count(user) for user in set(users)}
    argv = ["--dataset", "tiny", "--data-path", tiny_data, "--lengths", "20", "--models", "ChunkedELASTIC,CausalSASRec"]
    argv += ["--batches", "1", "--eval-batch-size", "64", "--out", str(tmp_path / "out")]
    assert eval_time.main(argv) == 0
    points = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [p["model"] for p in points] == ["ChunkedELASTIC", "CausalSASRec"]
    for point in points:
        assert point["users"] == len(counts)
        assert point["positions"] == {"padded": 20 * len(counts), "grouped": (max(counts.values()) - 2) * len(counts)}
        assert point["largest_score_difference"] < 1e-5


def test_paired_users_reads_a_sweeps_test_ranks_files_as_it_reads_checkpoints(tiny_data, tmp_path, capsys):
    output_dir = str(tmp_path / "out")
    result = run_sweep(["CausalSASRec"], "tiny", [7, 8], output_dir, {}, tiny_run_config(tiny_data))
    runs = result["rows"][0]["runs"]
    checkpoints = [run_record["model_file"] for run_record in runs]
    rank_files = [os.path.join(output_dir, run_record["test_ranks_file"]) for run_record in runs]
    paired_users = load_benchmark("paired_users")

    def table(paths, *flags):
        assert paired_users.main([*paths, "--bootstrap", "200", *flags]) == 0
        rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
        return [[cell.strip() for i, cell in enumerate(cells) if i != 1] for cells in rows]  # all but the file

    for flags in ([], ["--exclude_history"]):
        from_checkpoints = table(checkpoints, *flags)
        assert len(from_checkpoints) == 3 and from_checkpoints[2][4] != "", "no comparison row"
        assert table(rank_files, *flags) == from_checkpoints
        assert table([checkpoints[0], rank_files[1]], *flags) == from_checkpoints  # the two kinds mix

    # A general model's file has RecBole's rule only: asking for the other one is an error, not zeros.
    general = str(tmp_path / "test-ranks-BPR-seed7.csv")
    write_test_ranks(general, {"1": (3, None), "2": (0, None)})
    assert paired_users.main([general, general, "--exclude_history"]) == 2
    assert "has no ranks without the input items" in capsys.readouterr().err
