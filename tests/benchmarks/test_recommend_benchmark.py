"""The recommendation benchmark times the same recommendations the API returns."""

import json
import os
import subprocess
import sys

import pandas as pd

from recbole_elastic import recommend
from recbole_elastic.quick_start import run

from tests.helpers import REPO_ROOT, tiny_run_config


def test_recommend_benchmark_writes_the_apis_recommendations_and_times_each_stage(tiny_data):
    checkpoint = run("SASRec", "tiny", config_dict=tiny_run_config(tiny_data))["model_file"]
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "benchmarks", "recommend.py"),
        f"--checkpoint={checkpoint}",
        "--topk=4",
        "--batch-size=7",  # several batches, the last one short
        "--output=recs.tsv",
        "--json=report.json",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    with open("report.json", encoding="utf-8") as f:
        report = json.load(f)
    written = pd.read_csv("recs.tsv", sep="\t", dtype={"user": str, "item": str})
    expected = recommend(checkpoint, topk=4)
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, rtol=1e-6)
    assert report["users"] == 40 and report["rows"] == len(expected) == 160
    stages = report["load_seconds"] + report["score_seconds"] + report["write_seconds"]
    assert abs(report["total_seconds"] - stages) <= 0.02
    assert f"REPORT {json.dumps(report)}" in process.stdout
