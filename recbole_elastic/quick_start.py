"""Train and evaluate any model (plugin or RecBole built-in) with RecBole's own pipeline.

This never imports ``recbole.quick_start`` (which imports ray); it uses RecBole's data preparation, trainer and
evaluator directly, as RecBole's ``run_recbole`` does.
"""

import os
import time
from logging import getLogger
from typing import Any, Dict, List, Optional, Tuple

import torch

from recbole.data import create_dataset, data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_flops, get_trainer, init_logger, init_seed, set_color

from recbole_elastic.compat import load_checkpoint
from recbole_elastic.config import ElasticConfig
from recbole_elastic.distributed import build_trainer
from recbole_elastic.errors import ConfigError, DatasetFormatError, TrainingDivergedError
from recbole_elastic.utils import atomic_path, ensure_dataset, get_model


def build_config(
    model: str = "ELASTIC",
    dataset: str = "ml-100k",
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
) -> ElasticConfig:
    """RecBole config for ``model`` on ``dataset`` with the plugin's YAML defaults."""
    return ElasticConfig(
        model=get_model(model), dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )


def start_logging(config) -> None:
    """RecBole's ``init_logger``, after removing the handlers an earlier run installed.

    ``init_logger`` uses ``logging.basicConfig``, which does nothing once the root logger has handlers: without
    this, every run after the first in one process (a sweep) would log into the first run's file.
    """
    root = getLogger()
    for handler in root.handlers[:]:
        if getattr(handler, "_recbole_elastic", False):
            root.removeHandler(handler)
            handler.close()
    before = set(root.handlers)
    init_logger(config)
    for handler in set(root.handlers) - before:
        handler._recbole_elastic = True


def instrument_trainer(trainer) -> Tuple[List[float], List[float]]:
    """Make ``trainer`` write checkpoints atomically, time its epochs and keep its validation scores.

    Returns the lists it fills: seconds per training epoch, and the validation score after each evaluation.
    RecBole's ``_save_checkpoint`` writes the file in place, so a crash mid-write would leave half a checkpoint
    where the last good one was; here it writes a temporary file and renames it.
    """
    seconds: List[float] = []
    valid_scores: List[float] = []
    train_epoch = trainer._train_epoch
    valid_epoch = trainer._valid_epoch
    save_checkpoint = trainer._save_checkpoint

    def recorded_valid_epoch(*args, **kwargs):
        score, result = valid_epoch(*args, **kwargs)
        valid_scores.append(float(score))
        return score, result

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    def atomic_save_checkpoint(epoch, verbose=True, **kwargs):
        final = kwargs.pop("saved_model_file", trainer.saved_model_file)
        with atomic_path(final) as temporary:
            save_checkpoint(epoch, verbose=False, saved_model_file=temporary, **kwargs)
            written = os.path.exists(temporary)  # only rank 0 writes in distributed runs
        if written and verbose:
            getLogger().info(set_color("Saving current", "blue") + f": {final}")

    trainer._train_epoch = timed_train_epoch
    trainer._valid_epoch = recorded_valid_epoch
    trainer._save_checkpoint = atomic_save_checkpoint
    return seconds, valid_scores


def prepare_data(config) -> Tuple[Any, Any, Any, Any]:
    """``(dataset, train_data, valid_data, test_data)`` through RecBole, with errors a user can act on."""
    ensure_dataset(config)
    where = f"dataset '{config['dataset']}' in {config['data_path']}"
    try:
        dataset = create_dataset(config)
    except ValueError as error:
        if "is empty" in str(error):  # RecBole's Dataset._reset_index after filtering removed everything
            raise DatasetFormatError(
                f"Filtering left 0 interactions in {where}: nothing to train on. Loosen "
                f"user_inter_num_interval ({config['user_inter_num_interval']}), item_inter_num_interval "
                f"({config['item_inter_num_interval']}) or val_interval ({config['val_interval']})."
            ) from error
        raise DatasetFormatError(
            f"Could not read {where}: {error}. Check that every value matches its header type (':float' "
            "columns hold numbers) and that the columns match field_separator."
        ) from error
    except (KeyError, TypeError, IndexError) as error:
        raise DatasetFormatError(f"Could not read {where}: {type(error).__name__}: {error}.") from error
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return dataset, train_data, valid_data, test_data


def run(
    model: str = "ELASTIC",
    dataset: str = "ml-100k",
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    checkpoint: Optional[str] = None,
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset``, then evaluate the best checkpoint on the test split.

    With ``checkpoint`` (a RecBole checkpoint of the same model and config), training resumes from the epoch after
    the one it was saved at, with its weights, optimiser state and best validation score, and keeps saving to it.

    Returns the best validation score and metrics, the test metrics, the checkpoint path, epochs run, seconds per
    training epoch, the validation score after each evaluation (``valid_curve``) and the parameter count.
    """
    config = build_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    start_logging(config)
    logger = getLogger()
    logger.info(config)

    dataset_obj, train_data, valid_data, test_data = prepare_data(config)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model_obj)
    flops = get_flops(model_obj, dataset_obj, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = build_trainer(config, model_obj)
    epoch_seconds, valid_curve = instrument_trainer(trainer)
    if checkpoint:
        trainer.resume_checkpoint(checkpoint)
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
    except ValueError as error:
        if "loss is nan" not in str(error).lower():
            raise
        epoch = trainer.start_epoch + len(epoch_seconds)
        kept = trainer.saved_model_file if saved and os.path.isfile(trainer.saved_model_file) else None
        raise TrainingDivergedError(
            f"The training loss of {config['model']} became NaN in epoch {epoch}. "
            + (f"The last good checkpoint is kept: {kept}. " if kept else "No checkpoint had been saved yet. ")
            + "Lower learning_rate, or set clip_grad_norm (e.g. --clip_grad_norm=\"{'max_norm': 5}\")."
        ) from error
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

    memory_usage = memory_slot_usage(model_obj, test_data)
    if memory_usage:
        logger.info(set_color("interest memory", "yellow") + f": {memory_usage}")
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "valid_metric": config["valid_metric"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": dict(best_valid_result or {}),
        "test_result": dict(test_result),
        "model_file": trainer.saved_model_file if saved else None,
        "epochs": len(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "valid_curve": valid_curve,
        "params": sum(p.numel() for p in model_obj.parameters() if p.requires_grad),
        "memory_usage": memory_usage,
        "flops": flops,
    }


@torch.no_grad()
def memory_slot_usage(model: torch.nn.Module, eval_data) -> Optional[Dict[str, Any]]:
    """How many distinct interest-memory slots ``model`` retrieves over ``eval_data``'s users (None without a
    memory). A bank whose retrievals collapse onto a few slots is wasted capacity."""
    if not getattr(model, "use_interest_memory", False):
        return None
    was_training = model.training
    model.eval()
    counts = torch.zeros(model.interest_memory.n_slots, dtype=torch.long)
    for batch in eval_data:
        interaction = batch[0] if isinstance(batch, tuple) else batch
        slots = model.memory_slots(interaction.to(model.device)).reshape(-1).cpu()
        counts += torch.bincount(slots, minlength=counts.numel())
    model.train(was_training)
    used = int((counts > 0).sum())
    share = counts.float() / counts.sum().clamp(min=1)
    return {
        "distinct_slots": used,
        "total_slots": counts.numel(),
        "fraction_used": used / counts.numel(),
        "top10_share": float(share.topk(min(10, counts.numel())).values.sum()),  # retrievals on the 10 busiest
    }


def load_data_and_model(model_file: str) -> Tuple[Any, torch.nn.Module, Any, Any, Any, Any]:
    """Load a checkpoint saved by RecBole's trainer (plugin or built-in model) with its data.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's function of the same
    name, but works for plugin models, on torch >= 2.6, and without importing ray.
    """
    checkpoint = load_checkpoint(model_file, map_location="cpu")
    config = checkpoint["config"]
    if not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    # A checkpoint written by a distributed run is read here by one process.
    config["single_spec"] = True
    init_seed(config["seed"], config["reproducibility"])
    start_logging(config)
    logger = getLogger()
    logger.info(config)

    dataset, train_data, valid_data, test_data = prepare_data(config)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def read_checkpoint_config(path: str):
    """The Config pickled in a RecBole checkpoint; :class:`ConfigError` when the file is missing or not one."""
    if not os.path.isfile(path):
        raise ConfigError(f"Checkpoint file not found: {path}. Pass the .pth file RecBole saved (see checkpoint_dir).")
    try:
        return load_checkpoint(path, map_location="cpu")["config"]
    except Exception as error:
        raise ConfigError(f"{path} is not a readable RecBole checkpoint ({type(error).__name__}: {error}).") from error


def load_for_testing(path: str) -> Tuple[Any, torch.nn.Module, Any, Any]:
    """A saved model's ``(config, model, trainer, test_data)``, on the split it was trained with (no training)."""
    read_checkpoint_config(path)
    config, model, _, _, _, test_data = load_data_and_model(path)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return config, model, trainer, test_data


def evaluate_checkpoint(path: str) -> Dict[str, Any]:
    """Test metrics of a saved model, on the same data split it was trained with (no training)."""
    config, model, trainer, test_data = load_for_testing(path)
    test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=config["show_progress"])
    return {"model": config["model"], "dataset": config["dataset"], "model_file": path, "test_result": dict(test_result)}


@torch.no_grad()
def held_out_ranks(path: str) -> Dict[Any, int]:
    """0-based rank of each test user's held-out item in a saved model's full ranking (test split, no training).

    The ranking is the one RecBole's full-sort evaluation scores: padding and the user's history are excluded.
    Items tied with the target count as ranked below it. Keys are the users' internal ids; with leave-one-out
    each user has one held-out item. Metrics per user follow, e.g. NDCG@10 = 1 / log2(rank + 2) if rank < 10.
    """
    config, model, trainer, test_data = load_for_testing(path)
    trainer.tot_item_num = test_data._dataset.item_num
    model.eval()
    ranks: Dict[Any, int] = {}
    for batch in test_data:
        interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
        target_scores = scores[positive_u, positive_i].unsqueeze(1)
        batch_ranks = (scores[positive_u] > target_scores).sum(dim=1)
        users = interaction[config["USER_ID_FIELD"]][positive_u]
        for user, rank in zip(users.tolist(), batch_ranks.tolist()):
            if user in ranks:
                raise ValueError(f"user {user} has more than one test item; held_out_ranks expects leave-one-out")
            ranks[user] = rank
    return ranks

