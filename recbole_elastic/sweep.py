"""Run several models (plugin or RecBole built-in) under one dataset and protocol, over seeds, into one table.

``python run_recbole_elastic.py --model=ELASTIC,SASRec,LinRec --dataset=ml-100k [--seeds=1,2,3]``

Every model gets the same dataset and evaluation settings (config files and ``--key=value``); a config file may
hold a ``model_overrides`` section, ``{ModelName: {key: value}}``, applied to that model only. For each model the
table gives the mean ± std of every test metric over seeds, the best validation score, epochs run, seconds per
training epoch and the parameter count; the best mean per metric is marked. With two or more seeds, a paired
t-test over seeds compares each model's test ``valid_metric`` with the first model's. A model that fails gets a
row with its error and the others still run. Results go to ``<output_dir>/results.{csv,json,md}``, each run's
per-user test ranks (leave-one-out) to ``<output_dir>/test-ranks-<model>-seed<seed>.csv``.
"""

import csv
import io
import json
import math
import os
import statistics
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence

from recbole_elastic.atomic import atomic_write
from recbole_elastic.config import run_settings
from recbole_elastic.evaluate import write_test_ranks
from recbole_elastic.quick_start import run


def _mean_std(values: List[float]) -> Dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def paired_p_value(first: List[float], other: List[float]) -> Optional[float]:
    """Two-sided paired t-test p-value over pairs (seeds, or test users).

    None with fewer than two pairs; 1.0 when all differences are 0.
    """
    if len(first) < 2 or len(first) != len(other):
        return None
    differences = [a - b for a, b in zip(first, other)]
    if all(d == 0 for d in differences):
        return 1.0
    from scipy import stats

    return float(stats.ttest_rel(first, other).pvalue)


def summarise(model: str, runs: List[Dict[str, Any]], error: Optional[str]) -> Dict[str, Any]:
    """One table row from a model's per-seed results (``runs``) or its error."""
    row: Dict[str, Any] = {"model": model, "status": "failed" if error else "ok", "error": error, "runs": runs}
    if error:
        return row
    metrics = list(runs[0]["test_result"])
    row["test"] = {m: _mean_std([r["test_result"][m] for r in runs]) for m in metrics}
    row["best_valid"] = _mean_std([r["best_valid_score"] for r in runs])
    row["epochs"] = statistics.fmean(r["epochs"] for r in runs)
    seconds = [s for r in runs for s in r["epoch_seconds"]]
    row["seconds_per_epoch"] = statistics.fmean(seconds) if seconds else float("nan")
    row["params"] = runs[0]["params"]
    return row


def run_sweep(
    models: Sequence[str],
    dataset: str,
    seeds: Sequence[int],
    output_dir: str,
    file_settings: Optional[Dict[str, Any]] = None,
    overrides: Optional[Dict[str, Any]] = None,
    quick_start_budget: bool = False,
) -> Dict[str, Any]:
    """Train and evaluate each model for each seed; write and return the results table (see module docstring).

    ``file_settings`` is what :func:`recbole_elastic.config.load_config_files` read from the config files
    (``model_overrides`` included); ``overrides`` (the command line) win over it, and both over the CLI's
    quick-start budget when ``quick_start_budget`` (see :func:`recbole_elastic.config.run_settings`).
    """
    file_settings = file_settings or {}
    rows = []
    started = time.perf_counter()
    for model_index, model in enumerate(models):
        runs, error = [], None
        for seed_index, seed in enumerate(seeds):
            # One header per run: the epoch lines that follow do not say which model and seed they belong to.
            run_number = model_index * len(seeds) + seed_index + 1
            print(f"[{run_number}/{len(models) * len(seeds)}] {model} seed {seed}", flush=True)
            config_dict = run_settings(
                model, file_settings, overrides, quick_start_budget=quick_start_budget, seed=seed
            )
            try:
                runs.append({"seed": seed, **run(model, dataset, config_dict=config_dict)})
            except Exception as exc:  # one model's failure must not stop the sweep
                error = f"{type(exc).__name__}: {exc}"
                runs.append({"seed": seed, "error": error, "traceback": traceback.format_exc()})
                print(f"{model} seed {seed} failed ({error}); its other seeds are skipped", flush=True)
                break
        rows.append(summarise(model, runs, error))
    result = sweep_result(dataset, seeds, rows, time.perf_counter() - started)
    write_results(result, output_dir)
    return result


def sweep_result(dataset: str, seeds: Sequence[int], rows: List[Dict[str, Any]], wall_seconds: float) -> Dict[str, Any]:
    """The results of a sweep from its rows (:func:`summarise`), with each model's p-value against the first."""
    valid_metric = next((r["runs"][0]["valid_metric"].lower() for r in rows if r["status"] == "ok"), None)
    first = rows[0]
    for row in rows[1:]:
        if row["status"] == "ok" and first["status"] == "ok" and valid_metric in row["test"]:
            row["p_value"] = paired_p_value(
                [r["test_result"][valid_metric] for r in first["runs"]],
                [r["test_result"][valid_metric] for r in row["runs"]],
            )
    return {
        "dataset": dataset,
        "models": [row["model"] for row in rows],
        "seeds": list(seeds),
        "valid_metric": valid_metric,
        "wall_seconds": wall_seconds,
        "rows": rows,
    }


def _table(result: Dict[str, Any]) -> List[List[str]]:
    """Header and rows of the summary table, as strings; the best mean per metric column is marked ``*``."""
    rows = result["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    metrics = list(ok[0]["test"]) if ok else []
    first = rows[0]["model"] if rows else ""
    p_header = f"p vs {first} ({result['valid_metric']})"
    header = ["model", *metrics, "best valid", "epochs", "s/epoch", "params", p_header, "status"]
    best = {m: max(r["test"][m]["mean"] for r in ok) for m in metrics}
    table = [header]
    for row in rows:
        if row["status"] != "ok":
            table.append([row["model"], *["-"] * (len(header) - 2), f"failed: {row['error']}"])
            continue
        cells = [row["model"]]
        for m in metrics:
            stats = row["test"][m]
            mark = "*" if math.isclose(stats["mean"], best[m], rel_tol=0, abs_tol=1e-12) else ""
            cells.append(f"{stats['mean']:.4f}±{stats['std']:.4f}{mark}")
        p_value = row.get("p_value")
        cells += [
            f"{row['best_valid']['mean']:.4f}",
            f"{row['epochs']:g}",
            f"{row['seconds_per_epoch']:.1f}",
            str(row["params"]),
            "-" if p_value is None else f"{p_value:.3g}",
            "ok",
        ]
        table.append(cells)
    return table


def to_markdown(result: Dict[str, Any]) -> str:
    table = _table(result)
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(cells) + " |" for cells in table[1:]]
    seeds = ",".join(map(str, result["seeds"]))
    note = (
        f"\n{result['dataset']}, seeds {seeds}: test metrics as mean±std over seeds, * = best mean; "
        f"best valid = {result['valid_metric']} on validation; wall time {result['wall_seconds']:.0f} s.\n"
    )
    resumed = result.get("resumed_from")
    if resumed:
        note += (
            f"Resumed from {resumed['checkpoint']} at epoch {resumed['first_epoch']}: epochs and s/epoch count the "
            f"epochs run since.\n"
        )
    return "\n".join(lines) + "\n" + note


def to_csv(result: Dict[str, Any]) -> str:
    """One row per model with numeric columns: ``<metric>_mean``/``_std``, best_valid, epochs, ... , error."""
    rows = result["rows"]
    metrics = next((list(r["test"]) for r in rows if r["status"] == "ok"), [])
    header = ["model", "status"]
    header += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")]
    header += ["best_valid", "epochs", "seconds_per_epoch", "params", "p_value", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        if row["status"] != "ok":
            writer.writerow([row["model"], row["status"], *[""] * (len(header) - 3), row["error"]])
            continue
        values = [row["test"][m][stat] for m in metrics for stat in ("mean", "std")]
        p_value = row.get("p_value")
        extra = [row["best_valid"]["mean"], row["epochs"], row["seconds_per_epoch"], row["params"]]
        writer.writerow([row["model"], "ok", *values, *extra, "" if p_value is None else p_value, ""])
    return buffer.getvalue()


def write_results(result: Dict[str, Any], output_dir: str) -> None:
    """results.json (everything, per seed), results.csv and results.md (the table) in ``output_dir``, and each
    run's per-user test ranks as ``test-ranks-<model>-seed<seed>.csv`` (moved out of the run records, which name the
    file in ``test_ranks_file``; ``benchmarks/paired_users.py`` reads them in place of checkpoints)."""
    os.makedirs(output_dir, exist_ok=True)
    for row in result["rows"]:
        for run_record in row["runs"]:
            ranks = run_record.pop("test_ranks", None)
            if ranks:
                name = f"test-ranks-{row['model']}-seed{run_record['seed']}.csv"
                write_test_ranks(os.path.join(output_dir, name), ranks)
                run_record["test_ranks_file"] = name
    atomic_write(os.path.join(output_dir, "results.json"), json.dumps(result, indent=2, default=float))
    atomic_write(os.path.join(output_dir, "results.csv"), to_csv(result))
    atomic_write(os.path.join(output_dir, "results.md"), to_markdown(result))
