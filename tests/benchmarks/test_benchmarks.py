"""The benchmark scripts keep working (untimed: tiny inputs; efficiency numbers are not checked)."""

import importlib.util
import json
import os
import subprocess
import sys

from recbole_elastic.evaluate import held_out_ranks
from recbole_elastic.quick_start import run

from tests.helpers import REPO_ROOT, tiny_run_config


def test_efficiency_benchmark_runs_at_two_tiny_lengths(tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "benchmarks", "efficiency.py"),
        "--lengths",
        "8,16",
        "--models",
        "ELASTIC,SASRec,LinRec",
        "--n-items",
        "50",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert {(p["model"], p["length"]) for p in result["points"]} == {
        (m, n) for m in ("ELASTIC", "SASRec", "LinRec") for n in (8, 16)
    }
    for point in result["points"]:
        assert point["status"] == "ok", point
        assert point["inference_sequences_per_second"] > 0 and point["train_step_seconds"] > 0
        assert point["params"] > 0
    ratios = result["summary"]["per_length"]
    assert set(ratios) == {"8", "16"}
    assert ratios["16"]["inference_speedup_over_sasrec"] > 0
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
    assert 0.0 <= float(cells[7]) <= 1.0
