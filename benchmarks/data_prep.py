"""Host memory and time of preparing a sequential dataset: lazy prefix samples against RecBole's augmentation.

    python benchmarks/data_prep.py [--dataset ml-1m] [--data-path /work/shared/data] [--lengths 50,200,1000]
                                   [--modes lazy,recbole] [--dense-limit-gb 4] [--batch-size 2048] [--out DIR]

Each (mode, N) point runs in a fresh process: it builds the run path's data (``recbole_elastic.data.prepare_data``:
read the atomic files, filter, augment, split, build the loaders) for SASRec with ``MAX_ITEM_LIST_LENGTH = N``,
``lazy_sequence_windows`` True (``lazy``, ``LazySequentialDataset``) or False (``recbole``, RecBole's
``SequentialDataset``), then draws every training batch of one epoch (no model). Records

* ``prepare_seconds`` and ``epoch_batches_seconds`` (drawing the epoch's batches: the lazy windows are gathered
  there);
* ``peak_rss_mb`` (VmHWM: the process's peak resident set) and ``baseline_rss_mb`` (after imports);
* the number of training samples and the bytes a dense ``[samples, N]`` copy of the list fields takes.

A ``recbole`` point whose dense lists would exceed ``--dense-limit-gb`` (estimated from the ``lazy`` point at the
same N, so list ``lazy`` first) is skipped and recorded as such. Writes ``results.json`` and ``results.md``.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def measure_point(mode: str, length: int, args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    from recbole_elastic import compat
    from recbole_elastic.config import build_config
    from recbole_elastic.data import prepare_data

    compat.apply()
    torch.set_num_threads(1)
    config_dict = {
        "data_path": args.data_path,
        "MAX_ITEM_LIST_LENGTH": length,
        "lazy_sequence_windows": mode == "lazy",
        "train_batch_size": args.batch_size,
        "gpu_id": "",
        "show_progress": False,
    }
    config = build_config("SASRec", args.dataset, config_dict=config_dict)
    baseline = _rss_mb("VmRSS")
    start = time.perf_counter()
    dataset, train_data, _, _ = prepare_data(config)
    prepare_seconds = time.perf_counter() - start
    start = time.perf_counter()
    drawn = sum(len(batch) for batch in train_data)
    epoch_seconds = time.perf_counter() - start
    first = train_data._dataset[[0]]
    list_bytes = sum(
        first[field].element_size() * first[field][0].numel() for field in first.columns if field.endswith("_list")
    )
    return {
        "mode": mode,
        "length": length,
        "prepare_seconds": prepare_seconds,
        "epoch_batches_seconds": epoch_seconds,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "baseline_rss_mb": baseline,
        "train_samples": drawn,
        "all_samples": len(dataset),
        "dense_list_bytes": list_bytes * len(dataset),
        "dataset_class": type(dataset).__name__,
    }


def run_point(mode: str, length: int, args: argparse.Namespace) -> Dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--point", f"{mode}:{length}", *args.passthrough]
    process = subprocess.run(command, capture_output=True, text=True, timeout=args.point_timeout)
    if process.returncode != 0:
        return {"mode": mode, "length": length, "error": process.stderr[-2000:]}
    line = next(row for row in process.stdout.splitlines() if row.startswith("POINT "))
    return json.loads(line[len("POINT ") :])


def write_results(points: List[Dict[str, Any]], args: argparse.Namespace) -> None:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        settings = {key: value for key, value in vars(args).items() if key != "passthrough"}
        json.dump({"settings": settings, "points": points}, f, indent=2)
    lines = [
        f"{args.dataset}: preparing the run path's data (read, filter, augment, split, loaders), then drawing one "
        f"epoch of training batches ({args.batch_size} samples), one process per point",
        "",
        "| N | mode | prepare (s) | epoch's batches (s) | peak RSS (MB) | RSS after imports (MB) | samples | "
        "dense lists (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        if "skipped" in p or "error" in p:
            reason = p.get("skipped") or "error: " + p["error"].strip().splitlines()[-1]
            lines.append(f"| {p['length']} | {p['mode']} | {reason} | | | | | |")
            continue
        lines.append(
            f"| {p['length']} | {p['mode']} | {p['prepare_seconds']:.1f} | {p['epoch_batches_seconds']:.1f} | "
            f"{p['peak_rss_mb']:.0f} | {p['baseline_rss_mb']:.0f} | {p['all_samples']} | "
            f"{p['dense_list_bytes'] / 2**20:.0f} |"
        )
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-path", default="/work/shared/data")
    parser.add_argument("--lengths", default="50,200,1000")
    parser.add_argument("--modes", default="lazy,recbole")
    parser.add_argument("--dense-limit-gb", type=float, default=4.0, help="skip RecBole's dataset above this")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--point-timeout", type=int, default=1800)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "data-prep"))
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: mode:N in a child process
    args = parser.parse_args(argv)
    args.passthrough = ["--dataset", args.dataset, "--data-path", args.data_path, "--batch-size", str(args.batch_size)]
    if args.point:
        mode, length = args.point.split(":")
        print("POINT " + json.dumps(measure_point(mode, int(length), args)), flush=True)
        return
    points: List[Dict[str, Any]] = []
    for length in (int(n) for n in args.lengths.split(",")):
        for mode in args.modes.split(","):
            lazy = next((p for p in points if p["length"] == length and p["mode"] == "lazy" and "error" not in p), None)
            if mode == "recbole" and lazy and lazy["dense_list_bytes"] > args.dense_limit_gb * 2**30:
                needed = lazy["dense_list_bytes"] / 2**30
                points.append({"mode": mode, "length": length, "skipped": f"skipped: dense lists need {needed:.1f} GB"})
            else:
                points.append(run_point(mode, length, args))
            print(json.dumps(points[-1])[:400], flush=True)
    write_results(points, args)


if __name__ == "__main__":
    main()
