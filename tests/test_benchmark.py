"""The efficiency benchmark keeps working (untimed: tiny lengths, its numbers are not checked)."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_efficiency_benchmark_runs_at_two_tiny_lengths(tmp_path):
    out = tmp_path / "bench"
    command = [
        sys.executable, os.path.join(REPO_ROOT, "benchmarks", "efficiency.py"),
        "--lengths", "8,16", "--models", "ELASTIC,SASRec,LinRec", "--n-items", "50", "--batch-size", "2",
        "--warmup", "0", "--repeats", "1", "--out", str(out),
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
