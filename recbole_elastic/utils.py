"""Model lookup across the plugin and RecBole (RecBole's own ``get_model`` knows only its built-in models)."""

import difflib
import importlib
import os
from typing import Dict, List, Type

import torch

import recbole
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_elastic import model as plugin_model_package
from recbole_elastic.errors import UnknownModelError

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
