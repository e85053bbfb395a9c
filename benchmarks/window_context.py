"""How much history each training target sees under all-position windows, for several strides.

    python benchmarks/window_context.py --dataset ml-1m --data_path ../shared/data --length 200 \
        --strides 200,150,100,50 [--config_files benchmarks/configs/ml-1m.yaml]

Builds the run's real training split (RecBole's pipeline, the plugin's lazy dataset) and, for each stride S, the
windows ``AllPositionsTrainDataLoader`` trains on (``windows.window_end_samples``): a target at position p of its
window sees p + 1 items. Prints, per stride, the mean context of a training target, its ratio to the mean
context of the validation targets (what evaluation reads: up to N items), the share of targets that see fewer
items than their history holds (capped at N), the number of windows and the positions an epoch computes (cost).
"""

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def stride_statistics(users: np.ndarray, history: np.ndarray, length: int, stride: int) -> dict:
    """Context statistics of the windows of training samples (``users`` in time order per user; ``history``: the
    items before each target, uncapped)."""
    from recbole_elastic.windows import window_end_samples

    ends, loss_start = window_end_samples(users, length, stride)
    contexts, available = [], []
    for end, start in zip(ends, loss_start):
        n = min(history[end], length)  # the window's positions
        predicted = np.arange(start, n)  # positions with a loss
        contexts.append(predicted + 1)  # position p sees p + 1 items
        # its target has history[end] - (n - 1 - p) items before it; evaluation would read up to N of them
        available.append(np.minimum(history[end] - (n - 1 - predicted), length))
    contexts, available = np.concatenate(contexts), np.concatenate(available)
    return {
        "stride": stride,
        "windows": len(ends),
        "positions": int(len(ends) * length),
        "targets": int(len(contexts)),
        "mean_context": float(contexts.mean()),
        "short_share": float(np.mean(contexts < available)),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--strides", default=None, help="comma-separated; default N, 3N/4, N/2, N/4")
    args = parser.parse_args(argv)

    from recbole_elastic.quick_start import build_config, prepare_data

    config_dict = {"MAX_ITEM_LIST_LENGTH": args.length, "show_progress": False}
    if args.data_path:
        config_dict["data_path"] = args.data_path
    config = build_config(
        "ChunkedELASTIC",
        args.dataset,
        config_file_list=args.config_files.split() if args.config_files else None,
        config_dict=config_dict,
    )
    _, train_data, valid_data, _ = prepare_data(config)
    train = train_data._dataset.inter_feat
    users = train[config["USER_ID_FIELD"]].numpy()
    # items before each training target, uncapped: its place among the user's interactions
    order = np.argsort(users, kind="stable")
    first = np.r_[True, users[order][1:] != users[order][:-1]]
    starts = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    history = np.empty(len(users), dtype=np.int64)
    history[order] = np.arange(len(order)) - starts + 1
    valid_context = float(valid_data._dataset.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]].float().mean())
    strides = [args.length, 3 * args.length // 4, args.length // 2, args.length // 4]
    if args.strides:
        strides = [int(s) for s in args.strides.split(",")]
    print(f"{args.dataset}, N={args.length}: validation targets see {valid_context:.1f} items on average")
    print(
        "| stride | windows | positions per epoch | mean training context | vs validation | targets short of "
        "their history |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for stride in strides:
        s = stride_statistics(users, history, args.length, stride)
        print(
            f"| {stride} | {s['windows']:,} | {s['positions']:,} | {s['mean_context']:.1f} | "
            f"{s['mean_context'] / valid_context:.2f} | {s['short_share']:.0%} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
