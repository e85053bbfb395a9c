"""Is one saved model better than another on the same test users? A paired comparison over users.

    python benchmarks/paired_users.py RUN[,RUN...] [RUN[,...] ...] [--k 10] [--bootstrap 10000]
                                      [--seed 0] [--exclude_history]
    (RUN: a checkpoint, or the test-ranks CSV a sweep wrote for the run)

One training run gives one test score per model, and a seed-to-seed comparison needs many runs. This script asks
a cheaper, narrower question of the runs already made: on these test users, is the gap between two trained models
larger than the user-to-user noise? All runs must come from the same dataset and split (same users).

For each checkpoint it ranks every test user's held-out item (``recbole_elastic.evaluate.held_out_ranks``,
RecBole's full ranking; with ``--exclude_history`` without the user's input items). In place of a checkpoint it
takes the ``test-ranks-<model>-seed<seed>.csv`` a sweep wrote beside its results (the same ranks under both rules,
computed at the end of training), so runs compare after their checkpoints are gone. Then it scores each user:
NDCG@k = 1/log2(rank+2), Hit@k = 1 and MRR@k = 1/(rank+1) when rank < k, else 0. Every later checkpoint is
compared with the first one on NDCG@k: the mean per-user difference, a 95% percentile bootstrap interval over users,
and the two-sided paired t-test p-value. It prints a Markdown table. The result says nothing about seed-to-seed
variation of training.

A comma-separated group of checkpoints (one model trained with several seeds) counts as one model whose per-user
metrics are the means over its checkpoints: the test then asks whether the gap between the seed-averaged models
exceeds the user-to-user noise.
"""

import argparse
import math
import os
import re
import sys
from typing import Dict, List, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def per_user_metrics(ranks: np.ndarray, k: int) -> Dict[str, np.ndarray]:
    """Per-user NDCG@k, Hit@k and MRR@k from 0-based ranks of the held-out item."""
    within = ranks < k
    return {
        f"ndcg@{k}": np.where(within, 1.0 / np.log2(ranks + 2.0), 0.0),
        f"hit@{k}": within.astype(float),
        f"mrr@{k}": np.where(within, 1.0 / (ranks + 1.0), 0.0),
    }


def group_metrics(ranks_per_run: List[np.ndarray], k: int) -> Dict[str, np.ndarray]:
    """Per-user metrics averaged over runs of one model (seeds): ``ranks_per_run`` holds each run's ranks, the
    users in the same order."""
    runs = [per_user_metrics(ranks, k) for ranks in ranks_per_run]
    return {metric: np.mean([run[metric] for run in runs], axis=0) for metric in runs[0]}


def bootstrap_interval(differences: np.ndarray, resamples: int, seed: int) -> List[float]:
    """95% percentile interval of the mean of ``differences``, resampling users with replacement."""
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # in chunks, to bound memory for large user counts
        count = min(1000, resamples - start)
        picks = rng.integers(0, len(differences), size=(count, len(differences)))
        means[start : start + count] = differences[picks].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "checkpoints",
        nargs="+",
        help="saved models or a sweep's test-ranks CSV files (a comma-separated group: seeds of one model); each "
        "vs the first",
    )
    parser.add_argument("--k", type=int, default=10, help="cut-off of the per-user metrics (default 10)")
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument(
        "--exclude_history",
        action="store_true",
        help="rank without each user's input items (eval_exclude_history), as published ML-1M figures do",
    )
    args = parser.parse_args(argv)
    evaluation = {"eval_exclude_history": True} if args.exclude_history else None

    from recbole_elastic.errors import ConfigError, ElasticError
    from recbole_elastic.evaluate import held_out_ranks, read_checkpoint_config, read_test_ranks
    from recbole_elastic.sweep import paired_p_value

    def model_name(path: str) -> str:
        if path.endswith(".csv"):
            named = re.fullmatch(r"test-ranks-(.+)-seed-?\d+\.csv", os.path.basename(path))
            return named.group(1) if named else os.path.basename(path)
        return read_checkpoint_config(path)["model"]

    def ranks_of(path: str) -> Dict[str, int]:
        if not path.endswith(".csv"):
            return held_out_ranks(path, evaluation)
        column = 1 if args.exclude_history else 0
        ranks = {user: both[column] for user, both in read_test_ranks(path).items()}
        if None in ranks.values():
            raise ConfigError(f"{path} has no ranks without the input items (not a sequential model's run).")
        return ranks

    groups = [group.split(",") for group in args.checkpoints]
    try:
        names = [model_name(group[0]) for group in groups]
        ranks_per_group = [[ranks_of(path) for path in group] for group in groups]
    except ElasticError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    users = sorted(ranks_per_group[0][0])
    for group, group_ranks in zip(groups, ranks_per_group):
        for path, ranks in zip(group, group_ranks):
            if sorted(ranks) != users:
                print(
                    f"error: {path} was tested on other users than {groups[0][0]}; compare checkpoints of "
                    "the same dataset and split",
                    file=sys.stderr,
                )
                return 2
    metrics = [
        group_metrics([np.array([ranks[u] for u in users]) for ranks in group], args.k) for group in ranks_per_group
    ]

    key = f"ndcg@{args.k}"
    ranking = "without each user's input items" if args.exclude_history else "over every item"
    print(
        f"\n{len(users)} test users, ranked {ranking}; differences are per-user {key}, later model minus {names[0]}.\n"
    )
    print(
        f"| model | file | {key} | hit@{args.k} | mrr@{args.k} | difference | 95% bootstrap interval | "
        "paired t-test p |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, (name, group, metric) in enumerate(zip(names, groups, metrics)):
        means = " | ".join(f"{metric[m].mean():.4f}" for m in (key, f"hit@{args.k}", f"mrr@{args.k}"))
        path = ", ".join(os.path.basename(path) for path in group)
        if i == 0:
            print(f"| {name} | {path} | {means} | | | |")
            continue
        differences = metric[key] - metrics[0][key]
        low, high = bootstrap_interval(differences, args.bootstrap, args.seed)
        p_value = paired_p_value(list(metric[key]), list(metrics[0][key]))
        p_text = "n/a" if p_value is None or math.isnan(p_value) else f"{p_value:.3f}"
        print(
            f"| {name} | {os.path.basename(path)} | {means} | {differences.mean():+.4f} | "
            f"[{low:+.4f}, {high:+.4f}] | {p_text} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
