"""Shared test helpers: models built without a dataset, a tiny generated RecBole dataset, CLI and subprocess runs."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recbole.data.interaction import Interaction

from recbole_elastic.cli import main
from recbole_elastic.evaluate import held_out_ranks
from recbole_elastic.standalone import build_standalone_model

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_model(model_class, n_items: int = 30, max_len: int = 20, **overrides):
    """A model of ``model_class`` with its YAML defaults, without any RecBole dataset."""
    return build_standalone_model(model_class.__name__, n_items, max_len, **overrides)


def write_tiny_dataset(root: str, name: str = "tiny", n_users: int = 40, n_items: int = 60, seed: int = 0) -> str:
    """Write ``root/name/name.inter`` (user_id, item_id, timestamp) and return ``root``."""
    rng = random.Random(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(1, n_users + 1):
        for step in range(rng.randint(6, 14)):
            lines.append(f"{user}\t{rng.randint(1, n_items)}\t{1_000_000 + user * 100 + step}")
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return root


def tiny_run_config(data_path: str, **overrides) -> Dict[str, Any]:
    """A config_dict that trains a small model for one epoch on the tiny dataset in seconds."""
    config = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 10,
        "epochs": 1,
        "train_batch_size": 64,
        "eval_batch_size": 256,
        "hidden_size": 16,
        "inner_size": 32,
        "n_interests": 4,
        "memory_keys": 8,
        "memory_topk": 2,
        "memory_key_dim": 8,
        "show_progress": False,
        "checkpoint_dir": os.path.join(data_path, "saved"),
        "seed": 7,
        "gpu_id": "",
    }
    config.update(overrides)
    return config


def assert_rejects_hyperparameter(model_class, overrides: Dict[str, Any], key: str, allowed: str) -> None:
    """Building ``model_class`` with ``overrides`` raises the plugin's one-line message for ``key``."""
    from recbole_elastic.errors import ConfigError

    try:
        build_model(model_class, **overrides)
    except ConfigError as error:
        assert str(error) == (
            f"{model_class.__name__} hyperparameter `{key}` = {overrides[key]!r} is invalid: it must be {allowed}. "
            f"Set it in your config file or on the command line (--{key}=...)."
        )
    else:
        raise AssertionError(f"{model_class.__name__} accepted {key}={overrides[key]!r}")


def randomise_biases_and_gains(module):
    """Every bias, LayerNorm gain and BatchNorm statistic away from its initial value
    so that none of them is zero or the identity by accident in a comparison; eval mode."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.lower().endswith("norm.weight"):  # LayerNorm, query_norm, interest_norm, output_norm
                parameter.uniform_(0.5, 1.5)
            elif parameter.dim() == 1:
                parameter.normal_(0.0, 0.1)
        for norm in module.modules():
            if isinstance(norm, torch.nn.BatchNorm1d):
                norm.running_mean.normal_(0.0, 0.05)
                norm.running_var.uniform_(0.001, 0.005)  # the untrained query's variance is about 0.003
    return module.eval()


def padded_batch(sequences, width: int) -> Interaction:
    """An interaction of left-aligned item sequences right-padded with 0 to ``width``."""
    item_seq = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, items in enumerate(sequences):
        item_seq[row, : len(items)] = torch.tensor(items)
    return Interaction({"item_id_list": item_seq, "item_length": torch.tensor([len(s) for s in sequences])})


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


# Left-aligned item sequences of several lengths (one of a single item), as RecBole pads them.
PADDING_SEQUENCES = [[3, 5, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11], [4, 4, 9, 21, 13]]


def metrics_from_ranks(ranks: Dict[Any, int], k: int = 10) -> Dict[str, float]:
    """Leave-one-out test metrics at ``k`` from each test user's 0-based rank of the held-out item (as
    :func:`recbole_elastic.evaluate.held_out_ranks` gives them), computed here independently of RecBole: a hit is
    rank < k, MRR 1 / (rank + 1), NDCG 1 / log2(rank + 2), precision hits / k; each averaged over the users."""
    ranks = list(ranks.values())
    hits = [rank < k for rank in ranks]
    return {
        f"recall@{k}": sum(hits) / len(ranks),
        f"mrr@{k}": sum(1 / (rank + 1) for rank in ranks if rank < k) / len(ranks),
        f"ndcg@{k}": sum(1 / math.log2(rank + 2) for rank in ranks if rank < k) / len(ranks),
        f"hit@{k}": sum(hits) / len(ranks),
        f"precision@{k}": sum(hits) / k / len(ranks),
    }


def assert_metrics_match_the_checkpoint(metrics: Dict[str, float], model_file: str, tolerance: float = 1e-4) -> None:
    """``metrics`` (a run's reported test metrics, rounded to 4 decimals by RecBole) equal the ones recomputed
    from the saved checkpoint's per-user ranks; ``tolerance`` covers the rounding. A model scored wrongly at test
    time, a metric mislabelled or taken from the wrong split fails this."""
    assert_metrics_follow_from_ranks(metrics, held_out_ranks(model_file), tolerance)


def assert_metrics_follow_from_ranks(metrics: Dict[str, float], ranks: Dict[Any, int], tolerance: float = 1e-4) -> None:
    """``metrics`` (rounded to 4 decimals by RecBole) equal the ones :func:`metrics_from_ranks` computes from
    ``ranks``, every metric named in both and some hit among them."""
    expected = metrics_from_ranks(ranks)
    assert set(metrics) == set(expected)
    assert sum(expected.values()) > 0, "no test user's item ranked in the top 10: nothing is compared"
    for name, value in metrics.items():
        assert abs(value - expected[name]) <= tolerance, (name, value, expected[name])


def run_python_reporting(script: str, *args: str, marker: str = "REPORT ", timeout: int = 600):
    """Run ``script`` in a fresh interpreter (cwd = the test's cwd) and parse its ``marker``-prefixed JSON line."""
    process = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
        timeout=timeout,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    line = next(row for row in process.stdout.splitlines() if row.startswith(marker))
    return json.loads(line[len(marker) :])


def cli_args(data_path: str, dataset: str = "tiny", **extra) -> List[str]:
    """Command-line arguments that train on the tiny dataset with :func:`tiny_run_config`'s settings."""
    config = {**tiny_run_config(data_path), **extra}
    config.pop("load_col")
    args = [f"--dataset={dataset}", *(f"--{key}={value}" for key, value in config.items())]
    return args + ["--load_col={'inter': ['user_id', 'item_id', 'timestamp']}"]


def kill_once_training_starts(args: List[str], data_path: str) -> Tuple[int, str]:
    """Start ``run_recbole_elastic.py args`` (training on ``data_path`` for far longer than the test waits, with no
    checkpoint saved before the end), send SIGTERM to that process alone as soon as training has claimed its
    checkpoint name (an empty file in ``data_path/saved``), and return its exit status and stderr."""
    saved = os.path.join(data_path, "saved")
    args = [*args, "--epochs=200", "--eval_step=1000"]  # no validation, so no checkpoint until epoch 200
    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO_ROOT, "run_recbole_elastic.py"), *args],
        cwd=data_path,  # RecBole's log folders land beside the data, not in a folder other tests share
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )
    try:
        deadline = time.monotonic() + 240
        while not (os.path.isdir(saved) and os.listdir(saved)):
            assert process.poll() is None and time.monotonic() < deadline, "training never claimed a checkpoint"
            time.sleep(0.02)
        (claimed,) = os.listdir(saved)
        assert os.path.getsize(os.path.join(saved, claimed)) == 0  # killed while the claim is still empty
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, stderr


def run_cli_expecting_error(capsys, args: List[str]) -> str:
    """Run the CLI in-process; assert it ends with exit status 2 and one message, no traceback; return it."""
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def write_inter(data_path: str, name: str, text: str) -> None:
    folder = os.path.join(data_path, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write(text)


def no_checkpoints(data_path: str) -> bool:
    saved = os.path.join(data_path, "saved")
    return not os.path.isdir(saved) or not os.listdir(saved)
