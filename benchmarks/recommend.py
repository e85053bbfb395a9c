"""Time top-k recommendations for every user of a checkpoint's dataset: loading apart from scoring.

    python benchmarks/recommend.py --checkpoint PATH [--topk 10] [--batch-size 64] [--threads 1]
                                   [--output recs.tsv] [--json results.json]

Three timed stages, as ``python run_recbole_elastic.py --recommend`` runs them:

* ``load``: read the checkpoint, rebuild its dataset and split as for evaluation, build the model;
* ``score``: every user's history (everything the dataset holds, latest ``MAX_ITEM_LIST_LENGTH`` items), every
  item scored, history items excluded, the top ``--topk`` kept, as one DataFrame of external tokens;
* ``write``: the TSV, atomically (only with ``--output``).

Prints one JSON line (``REPORT {...}``: wall and CPU seconds per stage, users, rows, peak resident memory) and a
Markdown row.
"""

import argparse
import json
import os
import resource
import sys
import time
from typing import Dict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine, what the work cost apart from waiting."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by a training run of a sequential model")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="users scored at once (default the API's)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--output", default=None, help="also write the TSV here (replaced if it exists)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)

    import torch

    from recbole_elastic import compat
    from recbole_elastic.recommendations import DEFAULT_BATCH_SIZE, Recommender, write_recommendations

    torch.set_num_threads(args.threads)
    compat.apply()
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    start, start_cpu = time.perf_counter(), cpu_seconds()
    recommender = Recommender(args.checkpoint)
    loaded, loaded_cpu = time.perf_counter(), cpu_seconds()
    frame = recommender.for_users(topk=args.topk, batch_size=batch_size)
    scored, scored_cpu = time.perf_counter(), cpu_seconds()
    if args.output:
        write_recommendations(frame, args.output, overwrite=True)
    written = time.perf_counter()

    config = recommender.config
    report = {
        "model": config["model"],
        "dataset": config["dataset"],
        "max_len": config["MAX_ITEM_LIST_LENGTH"],
        "items": recommender.dataset.item_num - 1,
        "users": int(frame["user"].nunique()),
        "rows": len(frame),
        "topk": args.topk,
        "batch_size": batch_size,
        "threads": args.threads,
        "load_seconds": round(loaded - start, 2),
        "score_seconds": round(scored - loaded, 2),
        "write_seconds": round(written - scored, 2) if args.output else None,
        "total_seconds": round(written - start, 2),
        "load_cpu_seconds": round(loaded_cpu - start_cpu, 2),  # this process's user + system time
        "score_cpu_seconds": round(scored_cpu - loaded_cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    print("REPORT " + json.dumps(report))
    columns = ["model", "users", "items", "N", "top-k", "threads", "load s (CPU s)", "score s (CPU s)", "write s"]
    print("| " + " | ".join(columns + ["total s", "peak RSS MB"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {report['model']} | {report['users']} | {report['items']} | {report['max_len']} | {args.topk} | "
        f"{args.threads} | {report['load_seconds']} ({report['load_cpu_seconds']}) | {report['score_seconds']} "
        f"({report['score_cpu_seconds']}) | {report['write_seconds']} | {report['total_seconds']} | "
        f"{report['peak_rss_mb']} |"
    )
    if args.json:
        from recbole_elastic.atomic import atomic_write

        atomic_write(args.json, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
