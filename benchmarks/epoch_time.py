"""Training epoch time on a long-history dataset: all-position training against prefix samples, one run.

    python benchmarks/epoch_time.py [--dataset ml-1m] [--data-path ../shared/data] [--length 200]
                                    [--batches 3] [--threads 2] [--schemes 0,1,2] [--out DIR]

For each scheme it builds the plugin's run path (``prepare_data``, the model, the plugin's trainer and its
optimizer) on the same data and N, then times ``--batches`` training steps (``calculate_loss``, backward,
optimizer step) after one warm-up step, and multiplies the mean by the epoch's number of batches:

* ``ELASTIC, prefix samples``: RecBole's scheme, one sample per prefix, each re-encoded (lazy windows);
* ``CausalELASTIC, all positions``: one pass per user window, a loss at every position;
* ``CausalSASRec, all positions``: the same scheme for RecBole's SASRec layers.

Every scheme gets the same ``train_batch_size`` in targets (2,048 here: a prefix batch holds 2,048 samples, an
all-position batch 2,048 // N windows), so an epoch predicts every training target once in each scheme. The
epoch time is an estimate from the timed steps (``epoch_estimate_seconds``), not a full epoch, and says so.
Writes ``results.json`` and ``results.md``.
"""

import argparse
import os
import statistics
import sys
from typing import Any, Dict, List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

from common import training_step, write_results  # noqa: E402

SCHEMES = [
    ("ELASTIC, prefix samples", "ELASTIC", {}),
    ("CausalELASTIC, all positions", "CausalELASTIC", {"train_all_positions": True}),
    ("CausalSASRec, all positions", "CausalSASRec", {"train_all_positions": True}),
]


def build_run(model_name: str, extra: Dict[str, Any], args: argparse.Namespace, **settings: Any):
    """The plugin's run path for one scheme: ``(train_data, valid_data, model, trainer)`` on ``args``' data and N,
    at 2,048 training targets per batch, with ``settings`` on top."""
    from recbole_elastic.config import build_config
    from recbole_elastic.quick_start import build_data_and_model
    from recbole_elastic.trainer import get_trainer

    config_dict = {
        "data_path": args.data_path,
        "MAX_ITEM_LIST_LENGTH": args.length,
        "train_batch_size": 2048,
        "gpu_id": "",
        "show_progress": False,
        "seed": 2020,
        **settings,
        **extra,
    }
    config = build_config(model_name, args.dataset, config_dict=config_dict)
    _, train_data, valid_data, _, model = build_data_and_model(config)
    return train_data, valid_data, model, get_trainer(config)(config, model)


def measure(label: str, model_name: str, extra: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    train_data, _, _, trainer = build_run(model_name, extra, args)
    batches = iter(train_data)
    # The first step allocates the optimizer's state: not timed.
    seconds = [training_step(trainer, next(batches)) for _ in range(args.batches + 1)][1:]
    per_batch = statistics.fmean(seconds)
    return {
        "scheme": label,
        "model": model_name,
        "batches_per_epoch": len(train_data),
        "step_seconds": seconds,
        "epoch_estimate_seconds": per_batch * len(train_data),
    }


def to_markdown(points: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    base = points[0]["epoch_estimate_seconds"]
    lines = [
        f"{args.dataset}, N = {args.length}, train_batch_size 2,048 targets, {args.batches} timed steps per scheme, "
        f"{args.threads} threads.",
        "",
        f"| scheme | batches per epoch | s per step (mean) | epoch estimate | speed-up over {points[0]['scheme']} |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in points:
        step = statistics.fmean(p["step_seconds"])
        epoch = p["epoch_estimate_seconds"]
        lines.append(
            f"| {p['scheme']} | {p['batches_per_epoch']} | {step:.2f} | {epoch / 60:.1f} min | {base / epoch:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-path", default=os.path.join(REPO_ROOT, "..", "shared", "data"))
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--schemes", default="0,1,2", help="indices into SCHEMES, in table order (first: the base)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "epoch-time"))
    args = parser.parse_args()

    import torch

    from recbole_elastic import compat

    compat.apply()
    torch.set_num_threads(args.threads)
    chosen = [SCHEMES[int(index)] for index in args.schemes.split(",")]
    points = [measure(label, model, extra, args) for label, model, extra in chosen]
    write_results(args.out, points, to_markdown(points, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
