"""benchmarks/serving.py keeps working (untimed: tiny inputs; the timings are not checked)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_serving_benchmark_runs_at_one_tiny_length(tmp_path):
    out = tmp_path / "serving"
    script = os.path.join(REPO_ROOT, "benchmarks", "serving.py")
    arguments = ["--lengths", "8", "--models", "CausalELASTIC", "--batch", "3", "--repeats", "1", "--users", "30"]
    arguments += ["--events-per-user", "2", "--stream-batch", "20", "--single-events", "3", "--n-items", "40"]
    process = subprocess.run(
        [sys.executable, script, *arguments, "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [(p["model"], p["max_len"]) for p in result["user_vectors"]] == [("CausalELASTIC", 8)]
    assert result["user_vectors"][0]["max_abs_diff"] <= 1e-5
    # 30 users x 2 events in batches of 20, the first untimed
    assert result["streaming"]["batched_events"] == 40 and result["streaming"]["users"] == 30
