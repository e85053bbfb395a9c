"""RecBole configuration that knows the plugin's YAML files.

RecBole reads model defaults only from its own ``properties/model/<Model>.yaml``. ``ElasticConfig`` adds the
plugin's ``properties/model/<Model>.yaml`` at the same precedence as a built-in model's YAML (after
``overall.yaml``, before ``sample.yaml``), and the plugin's ``properties/dataset/<dataset>.yaml`` just after
``sample.yaml``. Everything the user passes (config files, ``config_dict``) still wins over both.

Two differences from RecBole's ``Config``, both so that one command line works for every model:

* it does not read ``sys.argv`` (RecBole's does, pytest's arguments included): the CLI parses the command line
  and passes it as ``config_dict``;
* ``train_neg_sample_args`` follows ``loss_type`` unless the user set it: no negative sampling for CE (RecBole
  raises otherwise, even for SASRec), one uniform negative for BPR.
"""

import os
from typing import Callable, Dict, List, Optional

from recbole.config import Config
from recbole.utils import ModelType

from recbole_elastic.errors import ConfigError

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")

BPR_DEFAULT_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def plugin_yaml(kind: str, name: str) -> Optional[str]:
    """Path of the plugin's ``properties/<kind>/<name>.yaml`` or None when the plugin ships none."""
    path = os.path.join(PROPERTIES_DIR, kind, f"{name}.yaml")
    return path if os.path.isfile(path) else None


def plugin_model_names() -> List[str]:
    """Models whose defaults the plugin ships."""
    return sorted(f[: -len(".yaml")] for f in os.listdir(os.path.join(PROPERTIES_DIR, "model")) if f.endswith(".yaml"))


def load_with_plugin_yamls(config: Config, file: str, load: Callable[[Config, str], Optional[Dict]]) -> Optional[Dict]:
    """Load one of RecBole's internal YAMLs with ``load``, and the plugin's YAMLs around ``sample.yaml``.

    RecBole loads, in order: overall, <model>.yaml, sample.yaml, <dataset>.yaml, quick-start YAMLs. Hooking the
    moment ``sample.yaml`` is read puts the plugin's model YAML exactly where a built-in model's sits, and the
    plugin's dataset YAML right after the generic dataset defaults.
    """
    is_sample = os.path.basename(file) == "sample.yaml"
    model_file = plugin_yaml("model", config.model) if is_sample else None
    if model_file:
        load(config, model_file)
    loaded = load(config, file)
    dataset_file = plugin_yaml("dataset", config.dataset) if is_sample else None
    if dataset_file:
        dataset_keys = load(config, dataset_file) or {}
        config.parameters["Dataset"] += [key for key in dataset_keys if key not in config.parameters["Dataset"]]
    return loaded


class ElasticConfig(Config):
    """RecBole ``Config`` with the plugin's YAML defaults; see the module docstring."""

    def __init__(
        self,
        model=None,
        dataset: Optional[str] = None,
        config_file_list: Optional[List[str]] = None,
        config_dict: Optional[Dict] = None,
    ) -> None:
        super().__init__(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)

    def _load_cmd_line(self) -> Dict:
        return {}

    def _update_internal_config_dict(self, file):
        return load_with_plugin_yamls(self, file, Config._update_internal_config_dict)

    def _get_final_config_dict(self) -> Dict:
        final = super()._get_final_config_dict()
        align_negative_sampling(final, self.external_config_dict)
        return final


def align_negative_sampling(final: Dict, external: Dict) -> None:
    """Make ``train_neg_sample_args`` follow ``loss_type`` for sequential models, unless the user set it."""
    if final.get("MODEL_TYPE") != ModelType.SEQUENTIAL:
        return
    loss_type = final.get("loss_type")
    user_set = "train_neg_sample_args" in external
    negatives = final.get("train_neg_sample_args")
    if loss_type == "CE":
        if not user_set:
            final["train_neg_sample_args"] = None
        elif negatives not in (None, "None") and negatives.get("distribution") not in (None, "none", "None"):
            raise ConfigError(
                "loss_type=CE scores every item, so it takes no negative samples, but train_neg_sample_args is "
                f"{negatives}. Remove train_neg_sample_args (or set it to ~), or use loss_type=BPR."
            )
    elif loss_type == "BPR":
        if not user_set and negatives is None:
            final["train_neg_sample_args"] = dict(BPR_DEFAULT_NEGATIVES)
        elif negatives is None or negatives == "None":
            raise ConfigError(
                "loss_type=BPR needs negative samples, but train_neg_sample_args is ~. Remove it to get one uniform "
                "negative per positive, or set e.g. train_neg_sample_args: {distribution: uniform, sample_num: 1}."
            )
