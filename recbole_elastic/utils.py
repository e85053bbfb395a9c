"""Model lookup across the plugin and RecBole, and dataset availability checks."""

import difflib
import importlib
import os
import shutil
from logging import getLogger
from typing import Dict, List, Optional, Type

import torch
import yaml

import recbole
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_elastic.errors import DatasetNotFoundError, UnknownModelError

RECBOLE_DIR = os.path.dirname(os.path.abspath(recbole.__file__))
RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def plugin_models() -> Dict[str, Type[AbstractRecommender]]:
    """The models this plugin provides, by class name."""
    from recbole_elastic import model as plugin_model_package

    return {name: getattr(plugin_model_package, name) for name in plugin_model_package.__all__}


def recbole_model_names() -> List[str]:
    """RecBole's built-in model names (one YAML per model in its properties)."""
    model_dir = os.path.join(RECBOLE_DIR, "properties", "model")
    return sorted(f[: -len(".yaml")] for f in os.listdir(model_dir) if f.endswith(".yaml"))


def get_model(model_name: str) -> Type[AbstractRecommender]:
    """Model class for ``model_name``: the plugin's models first, then RecBole's built-in ones.

    Raises :class:`UnknownModelError` with the closest known names when neither has it (RecBole's own lookup
    ends in ``No module named 'lightgbm'`` instead).
    """
    models = plugin_models()
    if model_name in models:
        return models[model_name]
    for package in RECBOLE_MODEL_PACKAGES:
        # Look for the file first: importing exlib_recommender itself needs lightgbm and xgboost.
        if not os.path.isfile(os.path.join(RECBOLE_DIR, "model", package, f"{model_name.lower()}.py")):
            continue
        anomaly_detection = torch.is_anomaly_enabled()
        try:
            module = importlib.import_module(f"recbole.model.{package}.{model_name.lower()}")
        except ImportError as error:
            raise UnknownModelError(
                f"RecBole model '{model_name}' needs a package that is not installed ({error}); install it with pip."
            ) from error
        finally:
            # Importing any sequential model imports RecBole's sine.py, which switches autograd anomaly detection
            # on for the whole process and halves training speed; keep the caller's setting.
            torch.autograd.set_detect_anomaly(anomaly_detection)
        model_class = getattr(module, model_name, None)
        if model_class is not None:
            return model_class
    known = sorted(set(models) | set(recbole_model_names()))
    close = difflib.get_close_matches(model_name, known, n=3, cutoff=0.5)
    close += [name for name in known if name.lower() == model_name.lower() and name not in close]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown model '{model_name}'.{hint} Plugin models: {', '.join(sorted(models))}; "
        f"RecBole models: {', '.join(recbole_model_names())}. Model names are case-sensitive."
    )


def _download_url(dataset_name: str) -> Optional[str]:
    with open(os.path.join(RECBOLE_DIR, "properties", "dataset", "url.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f).get(dataset_name)


def ensure_dataset(config) -> None:
    """Make sure the dataset's atomic files are on disk, downloading a RecBole dataset if needed.

    RecBole's own download calls ``torch.distributed.barrier()`` (crashes outside distributed runs) and
    ``input()`` for large archives; this one does neither. Raises :class:`DatasetNotFoundError` naming the files
    looked for and where to put them.
    """
    name = config["dataset"]
    dataset_dir = config["data_path"]
    suffixes = config["benchmark_filename"] or [None]
    needed = [os.path.join(dataset_dir, f"{name}.inter" if s is None else f"{name}.{s}.inter") for s in suffixes]
    if all(os.path.isfile(path) for path in needed):
        return
    where = (
        f"Put RecBole atomic files ({name}.inter with a header such as 'user_id:token\\titem_id:token\\t"
        f"timestamp:float'; optionally {name}.user and {name}.item) in {dataset_dir}/, or set data_path to the "
        f"folder that holds a '{name}/' folder (--data_path=/path/to/datasets)."
    )
    looked_for = ", ".join(needed)
    url = _download_url(name)
    if url is None:
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found: looked for {looked_for}, and '{name}' is not one of RecBole's "
            f"downloadable datasets. {where}"
        )
    from recbole.utils.url import download_url, extract_zip, rename_atomic_files

    created = not os.path.exists(dataset_dir)
    getLogger().info(f"Dataset '{name}' not found at {dataset_dir}; downloading {url}")
    try:
        os.makedirs(dataset_dir, exist_ok=True)
        archive = download_url(url, dataset_dir)
        extract_zip(archive, dataset_dir)
        os.unlink(archive)
        rename_atomic_files(dataset_dir, os.path.splitext(os.path.basename(archive))[0], name)
    except Exception as error:  # network, disk or archive errors all end the same way for the user
        if created:
            shutil.rmtree(dataset_dir, ignore_errors=True)
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found: looked for {looked_for}, and downloading it from {url} failed "
            f"({type(error).__name__}: {error}). {where}"
        ) from error
    if not all(os.path.isfile(path) for path in needed):
        raise DatasetNotFoundError(f"Downloaded '{name}' from {url}, but {looked_for} is still missing. {where}")
