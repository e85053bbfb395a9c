"""Train and evaluate any model (plugin or RecBole built-in) with RecBole's own pipeline.

This never imports ``recbole.quick_start`` (which imports ray); it uses RecBole's data preparation, trainer and
evaluator directly, as RecBole's ``run_recbole`` does.
"""

import time
from logging import getLogger
from typing import Any, Dict, List, Optional, Tuple

import torch

from recbole.data import create_dataset, data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_flops, get_trainer, init_logger, init_seed, set_color

from recbole_elastic.compat import load_checkpoint
from recbole_elastic.config import ElasticConfig
from recbole_elastic.utils import ensure_dataset, get_model


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


def _record_epoch_times(trainer) -> List[float]:
    """Wrap ``trainer._train_epoch`` so each training epoch's wall time is appended to the returned list."""
    seconds: List[float] = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        result = train_epoch(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return result

    trainer._train_epoch = timed_train_epoch
    return seconds


def run(
    model: str = "ELASTIC",
    dataset: str = "ml-100k",
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset``, then evaluate the best checkpoint on the test split.

    Returns the best validation score and metrics, the test metrics, the checkpoint path, epochs run, seconds per
    training epoch and the parameter count.
    """
    config = build_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    ensure_dataset(config)
    dataset_obj = create_dataset(config)
    logger.info(dataset_obj)
    train_data, valid_data, test_data = data_preparation(config, dataset_obj)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_obj = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model_obj)
    flops = get_flops(model_obj, dataset_obj, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model_obj)
    epoch_seconds = _record_epoch_times(trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])

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
        "params": sum(p.numel() for p in model_obj.parameters() if p.requires_grad),
        "flops": flops,
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
    init_logger(config)
    logger = getLogger()
    logger.info(config)

    ensure_dataset(config)
    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
