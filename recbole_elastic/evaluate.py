"""Tools for saved checkpoints: read one's config, evaluate it, rank each test user's held-out item.

Each rebuilds the run's data split through :func:`recbole_elastic.quick_start.load_data_and_model` (no training).
"""

import csv
import io
import os
from typing import Any, Dict, Optional, Tuple

import torch

from recbole_elastic.atomic import atomic_write
from recbole_elastic.compat import load_checkpoint
from recbole_elastic.errors import ConfigError
from recbole_elastic.quick_start import load_data_and_model
from recbole_elastic.trainer import get_trainer

# Settings an evaluation of a saved model may change: how it is scored, not the split or the model.
EVALUATION_KEYS = ("eval_exclude_history", "metrics", "topk", "eval_batch_size")


def read_checkpoint_config(path: str):
    """The Config pickled in a RecBole checkpoint; :class:`ConfigError` when the file is missing or not one."""
    if not os.path.isfile(path):
        raise ConfigError(f"Checkpoint file not found: {path}. Pass the .pth file RecBole saved (see checkpoint_dir).")
    try:
        return load_checkpoint(path, map_location="cpu")["config"]
    except Exception as error:
        raise ConfigError(f"{path} is not a readable RecBole checkpoint ({type(error).__name__}: {error}).") from error


def load_for_testing(path: str, evaluation: Optional[Dict[str, Any]] = None) -> Tuple[Any, torch.nn.Module, Any, Any]:
    """A saved model's ``(config, model, trainer, test_data)``, on the split it was trained with (no training).

    ``evaluation`` changes settings of :data:`EVALUATION_KEYS` (e.g. ``{"eval_exclude_history": True}``); any
    other key raises :class:`ConfigError`.
    """
    read_checkpoint_config(path)
    others = sorted(set(evaluation or {}) - set(EVALUATION_KEYS))
    if others:
        raise ConfigError(
            f"A saved model is evaluated with the settings it was trained with; only {', '.join(EVALUATION_KEYS)} "
            f"can change. Remove {', '.join(others)}."
        )
    config, model, _, _, _, test_data = load_data_and_model(path, evaluation)
    trainer = get_trainer(config)(config, model)
    return config, model, trainer, test_data


def evaluate_checkpoint(path: str, evaluation: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Test metrics of a saved model, on the same data split it was trained with (no training); ``evaluation`` as
    in :func:`load_for_testing`."""
    config, model, trainer, test_data = load_for_testing(path, evaluation)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "model_file": path,
        "test_result": dict(test_result),
    }


def held_out_ranks(path: str, evaluation: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    """0-based rank of each test user's held-out item in a saved model's full ranking (test split, no training).

    The ranking is the one the trainer's full-sort evaluation scores: padding is excluded, and so is the user's
    history for a general model, or the input sequence's items with ``eval_exclude_history`` (``evaluation`` as in
    :func:`load_for_testing`). Keys are user tokens; see the trainer's ``held_out_ranks`` for ties and misses.
    """
    _, _, trainer, test_data = load_for_testing(path, evaluation)
    column = 1 if trainer.exclude_history else 0
    return {user: ranks[column] for user, ranks in trainer.held_out_ranks(test_data).items()}


# The per-user test ranks a sweep writes beside its results (``test-ranks-<model>-seed<seed>.csv``), so that
# benchmarks/paired_users.py compares runs whose checkpoints are gone.
TEST_RANKS_HEADER = ("user_id", "rank", "rank_without_input_items")


def write_test_ranks(path: str, ranks: Dict[str, Tuple[int, Optional[int]]]) -> None:
    """Write the trainer's ``held_out_ranks`` as CSV (atomically); an empty cell where there is no second rule."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TEST_RANKS_HEADER)
    for user, (rank, rank_without_inputs) in ranks.items():
        writer.writerow([user, rank, "" if rank_without_inputs is None else rank_without_inputs])
    atomic_write(path, buffer.getvalue())


def read_test_ranks(path: str) -> Dict[str, Tuple[int, Optional[int]]]:
    """The ranks :func:`write_test_ranks` wrote; :class:`ConfigError` for a file that is not such a CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        if tuple(rows[0]) != TEST_RANKS_HEADER:
            raise ValueError(f"its header is {','.join(rows[0])}, not {','.join(TEST_RANKS_HEADER)}")
        return {user: (int(rank), int(without) if without else None) for user, rank, without in rows[1:]}
    except (OSError, ValueError, IndexError) as error:
        raise ConfigError(
            f"{path} is not a test-ranks file a sweep wrote ({type(error).__name__}: {error}). Pass a checkpoint "
            "or a test-ranks-<model>-seed<seed>.csv from a results folder."
        ) from error
