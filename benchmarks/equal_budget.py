"""Validation accuracy after the same wall-clock training budget: all-position training against prefix samples.

    python benchmarks/equal_budget.py [--minutes 15] [--checks 3] [--dataset ml-1m] [--data-path ../shared/data]
                                      [--length 200] [--schemes 0,1,2] [--threads 2] [--out DIR]

For each scheme of ``benchmarks/epoch_time.py`` (prefix-sample ELASTIC, all-position CausalELASTIC, all-position
CausalSASRec) it builds the plugin's run path on the same data and N (``prepare_data``, the model, the plugin's
trainer and optimizer), trains for ``--minutes`` of wall-clock time (RecBole's training step: loss, backward,
optimizer step; epochs repeat until the time is up, stopping mid-epoch), and evaluates full-ranking validation
metrics ``--checks`` times, evenly over the budget (evaluation time is not counted in the budget). Every scheme
gets the same ``train_batch_size`` in targets (2,048) and RecBole's default learning rate, so it measures what each
scheme learns per second of training, not a tuned comparison. Writes ``results.json`` and ``results.md``.
"""

import argparse
import os
import sys
from typing import Any, Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

from common import training_step, write_results  # noqa: E402
from epoch_time import SCHEMES, build_run  # noqa: E402  (the same schemes and run path as the epoch-time benchmark)

METRICS = ["ndcg@10", "hit@10", "mrr@10"]


def train_for(label: str, model_name: str, extra: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    evaluation = {
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["NDCG", "Hit", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "eval_batch_size": 4096,
    }
    train_data, valid_data, model, trainer = build_run(model_name, extra, args, **evaluation)
    budget = args.minutes * 60
    check_times = [budget * (i + 1) / args.checks for i in range(args.checks)]
    trained, steps, targets, checks = 0.0, 0, 0, []
    while check_times:
        for interaction in train_data:
            trained += training_step(trainer, interaction)
            steps += 1
            targets += training_targets(interaction, model)
            if trained >= check_times[0]:
                result = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
                epochs = targets / len(train_data.dataset)  # one prefix sample per training target, either scheme
                checks.append({"trained_seconds": trained, "steps": steps, "epochs": epochs})
                checks[-1].update({metric: float(result[metric]) for metric in METRICS})
                print(f"  {label}: {trained / 60:.1f} min, {steps} steps, valid ndcg@10 {result['ndcg@10']:.4f}")
                check_times.pop(0)
                if not check_times:
                    break
    return {"scheme": label, "model": model_name, "checks": checks}


def training_targets(interaction, model) -> int:
    """The targets a training batch holds: one per prefix sample, or every real position of each window."""
    if getattr(model, "TARGET_SEQ", None) in interaction:
        return int(interaction[model.ITEM_SEQ_LEN].sum())
    return len(interaction)


def to_markdown(points: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"{args.dataset}, N = {args.length}, {args.minutes} minutes of training per scheme ({args.threads} threads), "
        "train_batch_size 2,048 targets, learning rate 0.001, seed 2020; validation: leave-one-out by time, "
        "full ranking.",
        "",
        "| scheme | minutes trained | steps | epochs (targets / training targets) | valid NDCG@10 | Hit@10 | MRR@10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        for check in point["checks"]:
            lines.append(
                f"| {point['scheme']} | {check['trained_seconds'] / 60:.1f} | {check['steps']} | "
                f"{check['epochs']:.2f} | {check['ndcg@10']:.4f} | "
                f"{check['hit@10']:.4f} | {check['mrr@10']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15)
    parser.add_argument("--checks", type=int, default=3)
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-path", default=os.path.join(REPO_ROOT, "..", "shared", "data"))
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--schemes", default="0,1,2", help="indices into epoch_time.SCHEMES")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "equal-budget"))
    args = parser.parse_args()

    import torch

    from recbole_elastic import compat

    compat.apply()
    torch.set_num_threads(args.threads)
    points = []
    for index in args.schemes.split(","):
        points.append(train_for(*SCHEMES[int(index)], args))
        write_results(args.out, points)  # a partial run keeps the schemes it finished
    write_results(args.out, points, to_markdown(points, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
