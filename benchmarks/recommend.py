"""Time top-k recommendations for every user of a checkpoint's dataset: loading apart from scoring.

    python benchmarks/recommend.py --checkpoint PATH [--topk 10] [--batch-size 256] [--threads 1]
                                   [--output recs.tsv] [--json results.json]

Three timed stages, as ``python run_recbole_elastic.py --recommend`` runs them:

* ``load``: read the checkpoint, rebuild its dataset and split as for evaluation, build the model;
* ``score``: every user's history (everything the dataset holds, latest ``MAX_ITEM_LIST_LENGTH`` items), every
  item scored, history items excluded, the top ``--topk`` kept, as one DataFrame of external tokens;
* ``write``: the TSV, atomically (only with ``--output``).

Prints one JSON line (``REPORT {...}``: seconds per stage, users, rows, peak resident memory) and a Markdown row.
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


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a .pth saved by a training run of a sequential model")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256, help="users scored at once")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--output", default=None, help="also write the TSV here (replaced if it exists)")
    parser.add_argument("--json", default=None, help="also write the report here")
    args = parser.parse_args(argv)

    import torch

    from recbole_elastic import compat
    from recbole_elastic.recommendations import Recommender, write_recommendations

    torch.set_num_threads(args.threads)
    compat.apply()
    start = time.perf_counter()
    recommender = Recommender(args.checkpoint)
    loaded = time.perf_counter()
    frame = recommender.for_users(topk=args.topk, batch_size=args.batch_size)
    scored = time.perf_counter()
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
        "batch_size": args.batch_size,
        "threads": args.threads,
        "load_seconds": round(loaded - start, 2),
        "score_seconds": round(scored - loaded, 2),
        "write_seconds": round(written - scored, 2) if args.output else None,
        "total_seconds": round(written - start, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    print("REPORT " + json.dumps(report))
    print("| model | users | items | N | top-k | load s | score s | write s | total s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {report['model']} | {report['users']} | {report['items']} | {report['max_len']} | {args.topk} | "
        f"{report['load_seconds']} | {report['score_seconds']} | {report['write_seconds']} | "
        f"{report['total_seconds']} | {report['peak_rss_mb']} |"
    )
    if args.json:
        from recbole_elastic.atomic import atomic_write

        atomic_write(args.json, json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
