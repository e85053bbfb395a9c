"""Train and evaluate any model (plugin or RecBole built-in) with RecBole's own pipeline: :func:`run`.

Shaped like RecBole's ``run_recbole``: config, seed, logging, data, model, trainer, fit, evaluate. It never
imports ``recbole.quick_start`` (which imports ray). :func:`load_data_and_model` rebuilds a saved run's data and
model through the same steps.
"""

import logging
import os
from logging import getLogger
from typing import Any, Dict, List, Optional, Tuple

import torch

from recbole.data.transform import construct_transform
from recbole.utils import get_flops, init_logger, init_seed, set_color

from recbole_elastic.compat import load_checkpoint
from recbole_elastic.config import build_config
from recbole_elastic.data import prepare_data
from recbole_elastic.errors import TrainingDivergedError
from recbole_elastic.trainer import get_trainer
from recbole_elastic.utils import get_model


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
    training epoch, the validation score after each evaluation (``valid_curve``), the parameter count and, with
    leave-one-out full ranking in one process, each test user's rank of their held-out item (``test_ranks``, the
    trainer's ``held_out_ranks``; None otherwise).
    """
    config = build_config(model, dataset, config_file_list, config_dict)
    logger = getLogger()
    dataset_obj, train_data, valid_data, test_data, model_obj = build_data_and_model(config)
    flops = get_flops(model_obj, dataset_obj, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config)(config, model_obj)
    if checkpoint:
        trainer.resume_checkpoint(checkpoint)
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
    except ValueError as error:
        if "loss is nan" not in str(error).lower():
            raise
        raise diverged(config, trainer, saved) from error
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    # Per-user ranks let a paired comparison of runs outlive their checkpoints (one test item per user, one process).
    eval_args = config["eval_args"]
    one_item_per_user = "LS" in eval_args["split"] and eval_args["mode"]["test"] == "full"
    test_ranks = trainer.held_out_ranks(test_data) if one_item_per_user and config["single_spec"] else None

    memory_usage = model_obj.memory_slot_usage(test_data) if hasattr(model_obj, "memory_slot_usage") else None
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
        "device": str(config["device"]),
        **trainer.run_record(),
        "params": sum(p.numel() for p in model_obj.parameters() if p.requires_grad),
        "memory_usage": memory_usage,
        "flops": flops,
        "test_ranks": test_ranks,
    }


def build_data_and_model(config) -> Tuple[Any, Any, Any, Any, torch.nn.Module]:
    """Seed, logging, data, model: ``(dataset, train_data, valid_data, test_data, model)`` for ``config``.

    The model is seeded after the data (each rank of a distributed run with its own seed), as RecBole does.
    """
    init_seed(config["seed"], config["reproducibility"])
    start_logging(config)
    logger = getLogger()
    logger.info(config)
    dataset, train_data, valid_data, test_data = prepare_data(config)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    return dataset, train_data, valid_data, test_data, model


def load_data_and_model(
    model_file: str, config_overrides: Optional[Dict[str, Any]] = None
) -> Tuple[Any, torch.nn.Module, Any, Any, Any, Any]:
    """Load a checkpoint saved by RecBole's trainer (plugin or built-in model) with its data.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's function of the same
    name, but works for plugin models, on torch >= 2.6, and without importing ray. ``config_overrides`` replace
    settings of the saved config (e.g. how to evaluate); the caller keeps them to ones that leave the data split
    and the model as trained.
    """
    checkpoint = load_checkpoint(model_file, map_location="cpu")
    config = checkpoint["config"]
    for key, value in (config_overrides or {}).items():
        config[key] = value
    if not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    # A checkpoint written by a distributed run (by its rank 0) is read here by one process.
    config["single_spec"] = True
    dataset, train_data, valid_data, test_data, model = build_data_and_model(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def start_logging(config) -> None:
    """RecBole's ``init_logger`` (log file and console), after removing the handlers an earlier run installed.

    ``init_logger`` uses ``logging.basicConfig``, which does nothing once the root logger has handlers: without
    this, every run after the first in one process (a sweep) would log into the first run's file.

    The log file gets everything RecBole logs. Unless ``verbose_console`` is set, the console gets only warnings,
    the plugin's own lines (one per epoch) and RecBole's progress bars; Python warnings (pandas' and torch's
    FutureWarnings inside RecBole) go to the log file.
    """
    root = getLogger()
    for handler in root.handlers[:]:
        if getattr(handler, "_recbole_elastic", False):
            root.removeHandler(handler)
            handler.close()
    before = set(root.handlers)
    init_logger(config)
    quiet = not config["verbose_console"]
    logging.captureWarnings(quiet)
    for handler in set(root.handlers) - before:
        handler._recbole_elastic = True
        if quiet and not isinstance(handler, logging.FileHandler):
            handler.addFilter(quiet_console)


def quiet_console(record: logging.LogRecord) -> bool:
    """The console filter of a quiet run: the plugin's lines and warnings, not RecBole's info or Python's
    warnings (those stay in the log file)."""
    if record.name.startswith("recbole_elastic"):
        return True
    return record.levelno >= logging.WARNING and record.name != "py.warnings"


def diverged(config, trainer, saved: bool) -> TrainingDivergedError:
    """The error for a NaN training loss: the epoch it happened in and the last good checkpoint, if any."""
    epoch = trainer.start_epoch + len(trainer.epoch_seconds)  # the epoch that failed never finished
    kept = trainer.saved_model_file if saved and os.path.isfile(trainer.saved_model_file) else None
    return TrainingDivergedError(
        f"The training loss of {config['model']} became NaN in epoch {epoch}. "
        + (f"The last good checkpoint is kept: {kept}. " if kept else "No checkpoint had been saved yet. ")
        + "Lower learning_rate, or set clip_grad_norm (e.g. --clip_grad_norm=\"{'max_norm': 5}\")."
    )
