"""Tools for saved checkpoints: read one's config, evaluate it, rank each test user's held-out item.

Each rebuilds the run's data split through :func:`recbole_elastic.quick_start.load_data_and_model` (no training).
"""

import math
import os
from typing import Any, Dict, Optional, Tuple

import torch

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


@torch.no_grad()
def held_out_ranks(path: str, evaluation: Optional[Dict[str, Any]] = None) -> Dict[Any, int]:
    """0-based rank of each test user's held-out item in a saved model's full ranking (test split, no training).

    The ranking is the one the trainer's full-sort evaluation scores: padding is excluded, and so is the user's
    history for a general model, or the input sequence's items with ``eval_exclude_history`` (``evaluation`` as in
    :func:`load_for_testing`).
    Items tied with the target count as ranked below it. Keys are the users' internal ids; with leave-one-out
    each user has one held-out item. Metrics per user follow, e.g. NDCG@10 = 1 / log2(rank + 2) if rank < 10.
    """
    config, model, trainer, test_data = load_for_testing(path, evaluation)
    trainer.tot_item_num = test_data._dataset.item_num
    model.eval()
    ranks: Dict[Any, int] = {}
    for batch in test_data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
        target_scores = scores[positive_u, positive_i].unsqueeze(1)
        batch_ranks = (scores[positive_u] > target_scores).sum(dim=1)
        # A held-out item excluded with the history is a miss: ranked after every item.
        batch_ranks[target_scores.squeeze(1) == -math.inf] = scores.shape[1]
        users = interaction[config["USER_ID_FIELD"]][positive_u]
        for user, rank in zip(users.tolist(), batch_ranks.tolist()):
            if user in ranks:
                raise ValueError(f"user {user} has more than one test item; held_out_ranks expects leave-one-out")
            ranks[user] = rank
    return ranks
