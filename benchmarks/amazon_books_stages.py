"""amazon-books at full size: time and peak memory of each stage up to the first batch, then training speed.

    python benchmarks/amazon_books_standin.py --out ../standin         # once: the full-size stand-in (or the real file)
    python benchmarks/amazon_books_stages.py --data-path ../standin [--batches 3] [--points 0,1,2,3,4,5] [--out DIR]

Each run is a fresh process (``--run first`` / ``--run cached``) with the plugin's settings for amazon-books
(``properties/dataset/amazon-books.yaml``: ratings >= 3, 10-core, N = 50) and ``save_dataset: True``:

* ``first``: no cached dataset. Stages: load the atomic file, filter, remap ids, the rest of RecBole's
  processing, then (as ``cached``) windows and split, data loaders, the first training batch; the processed
  dataset is saved to the plugin's cache (``recbole_elastic.loading.dataset_cache_file``);
* ``cached``: the same settings again: load the cached dataset, windows and split, data loaders, first batch;
  then the training speed of each model and loss below on that data.

Training speed: ``--batches`` timed steps (loss, backward, optimizer step, after one warm-up step) at RecBole's
``train_batch_size`` of 2,048, times the epoch's number of batches: an estimate of one epoch, not a full epoch.
Models: ELASTIC and SASRec (``CausalSASRec`` on prefix samples, which is RecBole's SASRec: same layers and
readout) with ``loss_type`` CE (full softmax over every item) and SampledSoftmax (the plugin's defaults), on
RecBole's prefix samples; then CausalELASTIC and CausalSASRec with SampledSoftmax on all-position windows
(``train_all_positions``: one pass per user window, a loss at every position, 2,048 targets per batch).

"Peak RSS" is the process's peak resident memory from its start to the end of the stage (``ru_maxrss``).
Writes ``results.json`` and ``results.md`` to ``--out``.
"""

import argparse
import copyreg
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

from common import training_step, write_results  # noqa: E402

ALL_POSITIONS, PREFIXES = {"train_all_positions": True}, {"train_all_positions": False}
TRAINING = [  # model, loss_type, extra settings
    ("ELASTIC", "CE", {}),
    ("ELASTIC", "SampledSoftmax", {}),
    ("CausalSASRec", "CE", PREFIXES),
    ("CausalSASRec", "SampledSoftmax", PREFIXES),
    ("CausalELASTIC", "SampledSoftmax", ALL_POSITIONS),
    ("CausalSASRec", "SampledSoftmax", ALL_POSITIONS),
]


def training_label(model: str, extra: Dict[str, Any]) -> str:
    """SASRec on prefix samples is CausalSASRec's prefix mode (RecBole's SASRec); say which scheme trains."""
    if extra.get("train_all_positions"):
        return f"{model}, all positions"
    return "SASRec" if model == "CausalSASRec" else model


class StageClock:
    """Wall time and peak RSS at the end of each named stage, from the clock's start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = self.start
        self.stages: List[Dict[str, Any]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        seconds, self.last = now - self.last, now
        self.stages.append({"stage": name, "seconds": seconds, "elapsed": now - self.start, "peak_gib": peak_gib})
        print(f"  {name}: {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB", flush=True)

    def timed(self, name: str, method: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            result = method(*args, **kwargs)
            self.mark(name)
            return result

        return wrapper


def staged_dataset_class(clock: StageClock):
    """The run path's dataset class, marking the clock after loading, filtering, remapping and processing."""
    from recbole_elastic.windows import LazySequentialDataset

    class StagedDataset(LazySequentialDataset):
        def _load_data(self, *args):
            return clock.timed("load atomic file", super()._load_data)(*args)

        def _data_filtering(self):
            return clock.timed("filter (ratings >= 3, 10-core)", super()._data_filtering)()

        def _remap_ID_all(self):
            return clock.timed("remap ids", super()._remap_ID_all)()

        def _data_processing(self):
            return clock.timed("rest of RecBole's processing", super()._data_processing)()

        def __reduce_ex__(self, protocol):
            # Cached as the run path's own class, so a later run (without this benchmark) can load it.
            return copyreg._reconstructor, (LazySequentialDataset, object, None), self.__dict__

    return StagedDataset


def run_stages(args: argparse.Namespace) -> Dict[str, Any]:
    """One process: the stages up to the first batch; for ``cached``, then the training speed."""
    import torch

    from recbole.data import data_preparation

    from recbole_elastic import compat
    from recbole_elastic.config import build_config
    from recbole_elastic.quick_start import start_logging
    from recbole_elastic.windows import create_dataset

    compat.apply()
    torch.set_num_threads(args.threads)
    clock = StageClock()
    config = build_config("ELASTIC", "amazon-books", config_dict=settings(args, "CE"))
    start_logging(config)
    dataset = create_dataset(config, dataset_class=staged_dataset_class(clock))
    if args.run == "cached":
        clock.mark("load the cached dataset")
    train_data, _, _ = data_preparation(config, dataset)  # build(): windows and split, loaders
    clock.mark("windows, split and data loaders")
    next(iter(train_data))
    clock.mark("first training batch")
    interactions = int(dataset.inter_num)  # before build() turns interactions into samples
    record = {
        "run": args.run,
        "stages": clock.stages,
        "users": int(dataset.user_num - 1),
        "items": int(dataset.item_num - 1),
        "interactions": interactions,
        "training_samples": len(train_data.dataset),
        "batches_per_epoch": len(train_data),
    }
    if args.run == "cached":
        chosen = [TRAINING[int(index)] for index in args.points.split(",")]
        record["training"] = [training_speed(args, *point, train_data) for point in chosen]
    return record


def settings(args: argparse.Namespace, loss_type: str, extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """One run's config_dict: the stand-in's data and cache, ``loss_type``, RecBole's batch of 2,048, ``extra``."""
    return {
        **(extra or {}),
        "data_path": args.data_path,
        "checkpoint_dir": args.checkpoint_dir,  # the dataset cache
        "save_dataset": True,
        "loss_type": loss_type,
        "train_batch_size": 2048,
        "gpu_id": "",
        "show_progress": False,
        "seed": 2020,
    }


def training_speed(
    args: argparse.Namespace, model_name: str, loss_type: str, extra: Dict[str, Any], train_data
) -> Dict[str, Any]:
    from recbole_elastic.config import build_config
    from recbole_elastic.trainer import get_trainer
    from recbole_elastic.utils import get_model
    from recbole_elastic.windows import all_positions_train_data

    config = build_config(model_name, "amazon-books", config_dict=settings(args, loss_type, extra))
    train_data = all_positions_train_data(config, train_data)
    model = get_model(model_name)(config, train_data.dataset)
    trainer = get_trainer(config)(config, model)
    batches = iter(train_data)
    # The first step allocates the optimizer's state: not timed.
    seconds = [training_step(trainer, next(batches)) for _ in range(args.batches + 1)][1:]
    per_batch = statistics.fmean(seconds)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    label = training_label(model_name, extra)
    print(f"  {label} {loss_type}: {per_batch:.2f} s per batch, peak RSS so far {peak_gib:.2f} GiB", flush=True)
    return {
        "model": label,
        "batches_per_epoch": len(train_data),
        "loss_type": loss_type,
        "step_seconds": seconds,
        "epoch_estimate_seconds": per_batch * len(train_data),
        "peak_gib_so_far": peak_gib,
    }


def to_markdown(records: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    first = records[0]
    lines = [
        f"amazon-books stand-in at `{args.data_path}`: after filtering {first['users']:,} users, {first['items']:,} "
        f"items, {first['interactions']:,} interactions; {first['training_samples']:,} training samples, "
        f"{first['batches_per_epoch']:,} batches of 2,048 per epoch. {args.threads} threads.",
        "",
        "| run | stage | seconds | elapsed | peak RSS (GiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for record in records:
        for stage in record["stages"]:
            lines.append(
                f"| {record['run']} | {stage['stage']} | {stage['seconds']:.1f} | {stage['elapsed']:.1f} | "
                f"{stage['peak_gib']:.2f} |"
            )
    training = [point for record in records for point in record.get("training", [])]
    if training:
        lines += [
            "",
            "| model | loss | batches per epoch | s per batch (mean) | epoch estimate | peak RSS so far (GiB) |",
        ]
        lines.append("|---|---|---:|---:|---:|---:|")
        for point in training:
            per_batch = statistics.fmean(point["step_seconds"])
            lines.append(
                f"| {point['model']} | {point['loss_type']} | {point['batches_per_epoch']:,} | {per_batch:.2f} | "
                f"{point['epoch_estimate_seconds'] / 3600:.2f} h | {point['peak_gib_so_far']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-path", required=True, help="folder holding amazon-books/amazon-books.inter")
    parser.add_argument(
        "--checkpoint-dir", help="where the dataset cache goes (default: a temporary folder, removed afterwards)"
    )
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points", default="0,1,2,3,4,5", help="indices into TRAINING: which models and losses")
    parser.add_argument("--run", choices=["first", "cached"], help="one stage run in this process (internal)")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results", "amazon-books"))
    args = parser.parse_args()
    if args.run:
        record = run_stages(args)
        print("RECORD " + json.dumps(record))
        return 0

    temporary = None if args.checkpoint_dir else tempfile.mkdtemp(prefix="amazon-books-cache-")
    checkpoint_dir = args.checkpoint_dir or temporary
    records = []
    try:
        for run in ("first", "cached"):
            print(f"{run} run", flush=True)
            command = [sys.executable, __file__, *sys.argv[1:], "--run", run, "--checkpoint-dir", checkpoint_dir]
            output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            print(output.split("RECORD ", 1)[0], end="", flush=True)
            records.append(json.loads(output.split("RECORD ", 1)[1]))
    finally:
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)
    write_results(args.out, records, to_markdown(records, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
