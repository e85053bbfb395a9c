"""Full-sort evaluation time of the causal models: users grouped by history length against padded batches, one run.

    python benchmarks/eval_time.py [--dataset ml-1m] [--data-path ../shared/data] [--lengths 200,1000]
                                   [--models ChunkedELASTIC,CausalSASRec] [--batches 4] [--eval-batch-size 512]
                                   [--threads 1] [--out DIR]

For each model and N it builds the plugin's run path on the real data (untrained weights: the cost does not depend
on them) and scores every item for the users of the first ``--batches`` validation batches, two ways per batch,
alternating, so that both see the same machine:

* ``padded``: every user's history at N, in rows of ``inference_chunk_positions // N`` (the causal models' eval
  ``forward`` before length groups, CausalELASTIC's; the others encoded the batch in one pass);
* ``grouped``: the model's eval ``forward``, users sorted by history length, each group cut to its longest.

Reports the seconds and positions encoded of each, their ratios, and the largest difference between the two
scores (they compute the same function). Writes ``results.json`` and ``results.md``.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

from common import write_results  # noqa: E402
from epoch_time import build_run  # noqa: E402


def padded_scores(model, item_seq, item_seq_len):
    """Scores of every item with each history encoded at N, in rows of ``inference_chunk_positions // N``."""
    import torch

    rows = max(1, model.inference_chunk_positions // item_seq.size(1))
    outputs = [
        model.last_position_output(seq, seq_len) for seq, seq_len in zip(item_seq.split(rows), item_seq_len.split(rows))
    ]
    return model.score_all_items(torch.cat(outputs))


def grouped_positions(model, item_seq_len) -> int:
    """The positions the grouped forward encodes: each group's rows times its longest history."""
    from recbole_elastic.model.all_positions import length_groups

    return sum(len(rows) * longest for rows, longest in length_groups(item_seq_len, model.inference_chunk_positions))


def measure(model_name: str, length: int, args: argparse.Namespace) -> Dict[str, Any]:
    import torch

    args.length = length
    _, valid_data, model, _ = build_run(model_name, {}, args, eval_batch_size=args.eval_batch_size)
    model.eval()
    seconds = {"padded": 0.0, "grouped": 0.0}
    positions = {"padded": 0, "grouped": 0}
    users, largest_difference = 0, 0.0
    with torch.no_grad():
        for index, batch in enumerate(valid_data):
            if index == args.batches:
                break
            interaction = batch[0]
            item_seq, item_seq_len = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
            scores = {}
            # Alternate which goes first, so that neither always runs on a warmer cache.
            for way in ("padded", "grouped") if index % 2 == 0 else ("grouped", "padded"):
                start = time.perf_counter()
                if way == "padded":
                    scores[way] = padded_scores(model, item_seq, item_seq_len)
                else:
                    scores[way] = model.full_sort_predict(interaction)
                seconds[way] += time.perf_counter() - start
            positions["padded"] += item_seq.numel()
            positions["grouped"] += grouped_positions(model, item_seq_len)
            users += item_seq.size(0)
            largest_difference = max(largest_difference, float((scores["padded"] - scores["grouped"]).abs().max()))
    return {
        "model": model_name,
        "N": length,
        "users": users,
        "seconds": seconds,
        "positions": positions,
        "speed_up": seconds["padded"] / seconds["grouped"],
        "largest_score_difference": largest_difference,
    }


def to_markdown(points: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.dataset}, full-sort scores for the users of the first {args.batches} validation batches of "
        f"{args.eval_batch_size}, "
        f"{args.threads} thread(s), untrained weights.",
        "",
        "| model | N | users | padded s | grouped s | speed-up | padded positions | grouped positions | "
        "positions ratio | largest score difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        s, n = p["seconds"], p["positions"]
        lines.append(
            f"| {p['model']} | {p['N']} | {p['users']} | {s['padded']:.1f} | {s['grouped']:.1f} | "
            f"{p['speed_up']:.1f}x | {n['padded']:,} | {n['grouped']:,} | {n['padded'] / n['grouped']:.1f}x | "
            f"{p['largest_score_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-path", default=os.path.join(REPO_ROOT, "..", "shared", "data"))
    parser.add_argument("--lengths", default="200,1000")
    parser.add_argument("--models", default="ChunkedELASTIC,CausalSASRec")
    parser.add_argument("--batches", type=int, default=4, help="validation batches scored")
    parser.add_argument(
        "--eval-batch-size", type=int, default=512, help="users per batch (benchmarks/configs/ml-1m.yaml's)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "eval-time"))
    args = parser.parse_args(argv)

    import torch

    from recbole_elastic import compat

    compat.apply()
    torch.set_num_threads(args.threads)
    points = [
        measure(model, int(length), args) for length in args.lengths.split(",") for model in args.models.split(",")
    ]
    write_results(args.out, points, to_markdown(points, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
