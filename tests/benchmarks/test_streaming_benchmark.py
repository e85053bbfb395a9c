"""benchmarks/streaming.py keeps working (untimed: tiny inputs; the timings are not checked)."""

import json
import os
import subprocess
import sys

from tests.helpers import REPO_ROOT


def test_streaming_benchmark_runs_at_two_tiny_histories(tmp_path):
    out = tmp_path / "streaming"
    script = os.path.join(REPO_ROOT, "benchmarks", "streaming.py")
    arguments = ["--histories", "5,12", "--max-len", "8", "--events", "2", "--n-items", "40", "--out", str(out)]
    process = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [point["history"] for point in result["points"]] == [5, 12]
    assert result["points"][0]["stream_ratio_to_first"] == 1.0
    assert (out / "results.md").read_text().count("\n") == 6
