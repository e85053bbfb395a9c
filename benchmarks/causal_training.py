"""Training step time and peak memory of the causal models at the same real targets per step, side by side.

    python benchmarks/causal_training.py [--lengths 50,200,1000,2000,4000] [--targets 4000]
        [--models CausalSASRec,CausalLinRec,CausalELASTIC,CausalELASTIC+recency,ChunkedELASTIC]
        [--repeats 5] [--threads 2] [--ml1m ../shared/data --ml1m-lengths 200,1000] [--out DIR]

All models are built in one process from their YAML defaults with the same sizes (d=64, 2 layers, 2 heads,
dropout 0.2, CE over ``--n-items`` items, the plugin's optimizer: Adam, lazy Adam on the interest memory). At each
N a step trains on ``--targets // N`` full windows of N positions (``--targets`` real targets, whatever N), a loss
at every position; the models' steps are interleaved (model A, B, C, A, B, C, ...) so that a noisy machine slows
all of them alike, and the median of ``--repeats`` is reported with its ratio to CausalSASRec (and to
CausalLinRec). Peak memory is the resident-set peak of one step above the memory in use before it (VmHWM, see
``efficiency.peak_training_memory_mb``). With ``--ml1m`` the same is measured on real ml-1m windows: one batch of
the training windows ``AllPositionsTrainDataLoader`` builds at each of ``--ml1m-lengths`` (2,048 targets per batch,
``benchmarks/configs/ml-1m.yaml``), i.e. with the padding of real histories.
"""

import argparse
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import write_results  # noqa: E402
from efficiency import peak_training_memory_mb  # noqa: E402

DEFAULT_MODELS = "CausalSASRec,CausalLinRec,CausalELASTIC,CausalELASTIC+recency,ChunkedELASTIC"
# A label "Model+recency" is Model with causal_recency_bias; "Model@key=value" sets any other key.
VARIANTS = {"recency": {"causal_recency_bias": True}}


def model_settings(label: str) -> Dict[str, Any]:
    """The model name and overrides a label stands for: ``Name``, ``Name+recency`` or ``Name@key=value,...``."""
    name, _, extra = label.partition("+")
    settings: Dict[str, Any] = dict(VARIANTS[extra]) if extra else {}
    name, _, assignments = name.partition("@")
    for assignment in filter(None, assignments.split(",")):
        key, value = assignment.split("=")
        settings[key] = int(value) if value.isdigit() else {"True": True, "False": False}.get(value, value)
    return {"name": name, **settings}


def build(label: str, length: int, n_items: int):
    import torch

    from recbole_elastic.optim import build_optimizer
    from recbole_elastic.standalone import StandInConfig, build_standalone_model

    settings = model_settings(label)
    name = settings.pop("name")
    torch.manual_seed(0)
    model = build_standalone_model(
        name,
        n_items=n_items,
        max_len=length,
        hidden_size=64,
        inner_size=256,
        n_layers=2,
        n_heads=2,
        hidden_dropout_prob=0.2,
        attn_dropout_prob=0.2,
        loss_type="CE",
        **settings,
    ).train()
    optimizer = build_optimizer(StandInConfig(learner="adam", learning_rate=1e-3, weight_decay=0.0), model)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(batch).backward()
        optimizer.step()

    return step


def synthetic_windows(length: int, targets: int, n_items: int):
    """``targets // length`` full windows of random items, the next item at every position."""
    import torch

    from recbole.data.interaction import Interaction

    windows = max(targets // length, 1)
    generator = torch.Generator().manual_seed(0)
    items = torch.randint(1, n_items, (windows, length + 1), generator=generator)
    return Interaction(
        {
            "item_id_list": items[:, :-1],
            "item_length": torch.full((windows,), length, dtype=torch.long),
            "item_id": items[:, -1],
            "target_item_id_list": items[:, 1:],
        }
    )


def ml1m_windows(data_path: str, length: int):
    """The first training batch of ml-1m windows at N = ``length`` (2,048 targets), and the number of items."""
    from recbole_elastic.quick_start import build_config, prepare_data

    config_file = os.path.join(REPO_ROOT, "benchmarks", "configs", "ml-1m.yaml")
    config = build_config(
        "CausalSASRec",
        "ml-1m",
        config_file_list=[config_file],
        config_dict={"data_path": data_path, "MAX_ITEM_LIST_LENGTH": length, "show_progress": False},
    )
    dataset, train_data, _, _ = prepare_data(config)
    batch = next(iter(train_data))
    return batch, dataset.item_num


def interleaved(steps: Dict[str, Any], batch, repeats: int) -> Dict[str, Dict[str, float]]:
    """Median step seconds and peak MiB per model, the models' steps interleaved."""
    for step in steps.values():  # warm-up: Adam's state, allocator pools
        step(batch)
    peaks = {label: peak_training_memory_mb(lambda: step(batch), "cpu") for label, step in steps.items()}
    times: Dict[str, List[float]] = {label: [] for label in steps}
    for _ in range(repeats):
        for label, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[label].append(time.perf_counter() - start)
    return {label: {"seconds": statistics.median(times[label]), "peak_mb": peaks[label]} for label in steps}


def ratio(value: float, reference: Optional[float]) -> str:
    return f"{value / reference:.2f}x" if reference else ""


def to_markdown(points: List[Dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Causal models: one training step at the same real targets",
        "",
        f"`python benchmarks/causal_training.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        "",
        f"CPU, {args.threads} threads; d=64, 2 layers, 2 heads, dropout 0.2, CE; median of {args.repeats} "
        "interleaved steps; peak = resident-set peak of one step above the memory before it.",
        "",
        "| data | N | windows x N | model | step s | vs CausalSASRec | vs CausalLinRec | peak MiB | "
        "peak vs CausalSASRec |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        models = point["models"]
        sasrec, linrec = models.get("CausalSASRec"), models.get("CausalLinRec")
        for label, value in models.items():
            lines.append(
                f"| {point['data']} | {point['length']} | {point['shape']} | {label} | {value['seconds']:.3f} | "
                f"{ratio(value['seconds'], sasrec and sasrec['seconds'])} | "
                f"{ratio(value['seconds'], linrec and linrec['seconds'])} | {value['peak_mb']:.0f} | "
                f"{ratio(value['peak_mb'], sasrec and sasrec['peak_mb'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="50,200,1000,2000,4000")
    parser.add_argument("--targets", type=int, default=4000, help="real targets per step, at every N")
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--n-items", type=int, default=3707, help="ml-1m's 3,706 items and padding")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ml1m", default=None, help="data_path holding ml-1m: also time real ml-1m windows")
    parser.add_argument("--ml1m-lengths", default="200,1000")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "out", "causal-training"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    labels = args.models.split(",")
    points = []
    for length in map(int, args.lengths.split(",")):
        batch = synthetic_windows(length, args.targets, args.n_items)
        steps = {label: build(label, length, args.n_items) for label in labels}
        shape = f"{len(batch)} x {length}"
        points.append(
            {"data": "synthetic", "length": length, "shape": shape, "models": interleaved(steps, batch, args.repeats)}
        )
        print(to_markdown(points[-1:], args), flush=True)
    if args.ml1m:
        for length in map(int, args.ml1m_lengths.split(",")):
            batch, n_items = ml1m_windows(args.ml1m, length)
            steps = {label: build(label, length, n_items) for label in labels}
            real = int((batch["target_item_id_list"] != 0).sum())
            shape = f"{len(batch)} x {length} ({real} targets)"
            points.append(
                {"data": "ml-1m", "length": length, "shape": shape, "models": interleaved(steps, batch, args.repeats)}
            )
            print(to_markdown(points[-1:], args), flush=True)
    write_results(args.out, points, to_markdown(points, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
