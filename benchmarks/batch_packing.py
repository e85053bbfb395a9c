"""What a training batch of all-position windows holds at several window lengths, for each ``train_batch_counts``.

    python benchmarks/batch_packing.py --dataset ml-1m --data_path ../shared/data \
        --config_files benchmarks/configs/ml-1m.yaml --lengths 200,1000

Builds the run's real training windows (RecBole's pipeline, ``AllPositionsTrainDataLoader``) and iterates one
epoch of batches without a model. Prints, per N and scheme: the batches (optimizer steps) per epoch, the real
targets per batch (mean, min, max) and the positions a batch computes (windows x its longest window, after the
cut), the cost proxy for the model. No timing: the figures are counts, the same on any machine.
"""

import argparse
import os
import sys
from typing import List, Optional

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)


def epoch_batches(train_data) -> dict:
    """Counts over one epoch of ``train_data``'s batches."""
    targets, positions = [], []
    for batch in train_data:
        items = batch["target_item_id_list"]
        targets.append(int((items != 0).sum()))
        positions.append(items.numel())
    targets = np.array(targets)
    return {
        "batches": len(targets),
        "targets": int(targets.sum()),
        "mean": float(targets.mean()),
        "min": int(targets.min()),
        "max": int(targets.max()),
        "positions": float(np.mean(positions)),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--config_files", default=None)
    parser.add_argument("--lengths", default="50,200")
    parser.add_argument("--model", default="CausalSASRec")
    parser.add_argument("--train_batch_size", type=int, default=None, help="default: the config's")
    args = parser.parse_args(argv)

    from recbole_elastic.quick_start import build_config, prepare_data

    print(
        "| N | train_batch_counts | train_batch_size | batches per epoch | real targets per batch: mean (min-max) | "
        "positions computed per batch |"
    )
    print("|---:|---|---:|---:|---|---:|")
    for length in [int(n) for n in args.lengths.split(",")]:
        for counts in ("slots", "targets"):
            config_dict = {"MAX_ITEM_LIST_LENGTH": length, "show_progress": False, "train_batch_counts": counts}
            if args.data_path:
                config_dict["data_path"] = args.data_path
            if args.train_batch_size:
                config_dict["train_batch_size"] = args.train_batch_size
            config = build_config(
                args.model,
                args.dataset,
                config_file_list=args.config_files.split() if args.config_files else None,
                config_dict=config_dict,
            )
            _, train_data, _, _ = prepare_data(config)
            row = epoch_batches(train_data)
            print(
                f"| {length} | {counts} | {config['train_batch_size']} | {row['batches']} | "
                f"{row['mean']:.0f} ({row['min']}-{row['max']}) | {row['positions']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
