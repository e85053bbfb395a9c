"""A plugin or RecBole sequential model built from its YAML defaults, without a RecBole Config or dataset.

For benchmarks and unit tests: the stand-ins provide only what a sequential model reads in ``__init__``.
"""

import os
from typing import Dict

import torch
import yaml

from recbole_elastic.config import plugin_yaml
from recbole_elastic.utils import RECBOLE_DIR, get_model

SEQUENTIAL_FIELDS = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "LIST_SUFFIX": "_list",
    "ITEM_LIST_LENGTH_FIELD": "item_length",
    "NEG_PREFIX": "neg_",
}


class StandInConfig(dict):
    """What a RecBole model reads from its Config: ``config[key]``, None when missing."""

    def __getitem__(self, key: str):
        return self.get(key)


class StandInDataset:
    """What a sequential model reads from its dataset: the number of item ids (padding 0 included), and the
    training targets (``inter_feat``; the sampled softmax's item frequencies): every item once."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items
        self.inter_feat = {SEQUENTIAL_FIELDS["ITEM_ID_FIELD"]: torch.arange(1, n_items)}

    def num(self, field: str) -> int:
        return self.n_items


def model_defaults(model_name: str) -> Dict:
    """A model's YAML defaults: the plugin's ``properties/model/<name>.yaml``, else RecBole's."""
    path = plugin_yaml("model", model_name) or os.path.join(RECBOLE_DIR, "properties", "model", f"{model_name}.yaml")
    with open(path, encoding="utf-8") as f:
        defaults = yaml.load(f, Loader=yaml.FullLoader) or {}
    defaults["layer_norm_eps"] = float(defaults.get("layer_norm_eps", 1e-12))
    return defaults


def build_standalone_model(model_name: str, n_items: int, max_len: int, device: str = "cpu", **overrides):
    """A sequential model with its YAML defaults and ``overrides``, without a RecBole dataset or data files.

    For benchmarks and unit tests: the model sees ``n_items`` item ids and sequences of up to ``max_len``.
    """
    config = StandInConfig({**SEQUENTIAL_FIELDS, **model_defaults(model_name)})
    config.update({"device": torch.device(device), "MAX_ITEM_LIST_LENGTH": max_len, **overrides})
    return get_model(model_name)(config, StandInDataset(n_items)).to(device)
