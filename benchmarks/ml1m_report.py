"""Issue 17's ml-1m tables from the runs of ``benchmarks/ml1m_trial.sh``: every tuning trial, each model's choice
on validation, and the final comparison over seeds.

    python benchmarks/ml1m_report.py [--results benchmarks/results/ml-1m-trials] [--reference CausalSASRec]

Each run directory holds a sweep's ``results.json``. A directory ``NAME-seeds...`` (``NAME-seeds``,
``NAME-seeds-2022``, ...) holds more seeds of trial ``NAME`` (same settings, other ``--seeds``); every other
directory is a tuning trial. A model's configuration is its trial with the best validation NDCG@10 (seed 2020);
its final row pools that trial's run with the runs of every ``NAME-seeds...`` directory: test metrics as mean ±
std over seeds, and the ratio of each model's mean test NDCG@10 to the ``--reference`` model's. Prints
Markdown; the per-user paired test is ``benchmarks/paired_users.py`` on the checkpoints this lists.
"""

import argparse
import json
import os
import statistics
from typing import Any, Dict, List, Optional

METRICS = ["ndcg@10", "hit@10", "mrr@10", "ndcg@20", "hit@20", "mrr@20"]


def read_runs(directory: str) -> List[Dict[str, Any]]:
    with open(os.path.join(directory, "results.json"), encoding="utf-8") as f:
        result = json.load(f)
    return [run for row in result["rows"] for run in row["runs"] if "error" not in run]


def mean_std(values: List[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default="benchmarks/results/ml-1m-trials")
    parser.add_argument("--reference", default="CausalSASRec", help="the model the ratios are taken against")
    args = parser.parse_args(argv)

    names = sorted(d for d in os.listdir(args.results) if os.path.isfile(os.path.join(args.results, d, "results.json")))
    trials = {name: read_runs(os.path.join(args.results, name)) for name in names if "-seeds" not in name}
    trials = {name: runs for name, runs in trials.items() if runs}

    print("## Tuning trials (seed 2020; chosen on validation NDCG@10)\n")
    print("| trial | model | best valid NDCG@10 | test NDCG@10 | epochs | s/epoch (train) | valid NDCG@10 by epoch |")
    print("|---|---|---:|---:|---:|---:|---|")
    chosen: Dict[str, str] = {}
    for name, runs in trials.items():
        run = runs[0]
        model = run["model"]
        if model not in chosen or run["best_valid_score"] > trials[chosen[model]][0]["best_valid_score"]:
            chosen[model] = name
        curve = " / ".join(f"{score:.4f}" for score in run["valid_curve"])
        seconds = statistics.fmean(run["epoch_seconds"])
        print(
            f"| {name} | {model} | {run['best_valid_score']:.4f} | {run['test_result']['ndcg@10']:.4f} | "
            f"{run['epochs']} | {seconds:.0f} | {curve} |"
        )

    print("\n## Each model at its chosen trial, over seeds\n")
    print(f"| model | trial | seeds | {' | '.join('test ' + m for m in METRICS)} | NDCG@10 / {args.reference} |")
    print("|---|---|---|" + "---:|" * (len(METRICS) + 1))
    pooled = {}
    for model, name in sorted(chosen.items()):
        runs = list(trials[name])
        for seeds_dir in (other for other in names if other.startswith(name + "-seeds")):
            runs += read_runs(os.path.join(args.results, seeds_dir))
        pooled[model] = runs
    reference = pooled.get(args.reference)
    for model, runs in pooled.items():
        cells = [mean_std([run["test_result"][m] for run in runs]) for m in METRICS]
        ndcg = statistics.fmean(run["test_result"]["ndcg@10"] for run in runs)
        ratio = (
            "" if not reference else f"{ndcg / statistics.fmean(r['test_result']['ndcg@10'] for r in reference):.3f}"
        )
        seeds = ",".join(str(run["seed"]) for run in runs)
        print(f"| {model} | {chosen[model]} | {seeds} | {' | '.join(cells)} | {ratio} |")

    print("\nCheckpoints, for `python benchmarks/paired_users.py` (one comma-separated group per model):\n")
    for model, runs in pooled.items():
        print(f"- {model}: `{','.join(run['model_file'] for run in runs)}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
