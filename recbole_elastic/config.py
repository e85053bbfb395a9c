"""RecBole configuration that knows the plugin's YAML files.

RecBole reads model defaults only from its own ``properties/model/<Model>.yaml``. ``ElasticConfig`` adds the
plugin's ``properties/model/<Model>.yaml`` at the same precedence as a built-in model's YAML (after
``overall.yaml``, before ``sample.yaml``), and the plugin's ``properties/dataset/<dataset>.yaml`` just after
``sample.yaml``. Everything the user passes (config files, ``config_dict``) still wins over both.

Other differences from RecBole's ``Config``:

* it does not read ``sys.argv`` (RecBole's does, pytest's arguments included): the CLI parses the command line
  and passes it as ``config_dict``;
* ``train_neg_sample_args`` follows ``loss_type`` unless the user set it: no negative sampling for CE (RecBole
  raises otherwise, even for SASRec) and for the plugin's ``SampledSoftmax`` (the model draws its own negatives),
  one uniform negative for BPR;
* distributed runs on CPU join their process group with gloo (RecBole hard-codes NCCL and CUDA);
* ``warmup_steps`` and ``lr_schedule`` (the trainers' learning-rate schedule) are checked when the config is built;
* ``show_progress`` defaults to False when the progress bars' stream (stderr) is not a terminal: tqdm redraws a
  bar with ``\\r``, so in a file or a pipe every bar becomes one long line. A value the user set still wins;
* constructing one applies the plugin's compatibility shims (``compat.apply``) first.

The module also reads the user's config files, checks every key against what RecBole and the plugin know, and
assembles each run's settings in one place (:func:`run_settings`).
"""

import difflib
import functools
import glob
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Optional

import yaml

from recbole.config import Config
from recbole.utils import InputType, ModelType

from recbole_elastic import compat
from recbole_elastic.errors import ConfigError
from recbole_elastic.model.sampled_softmax import SAMPLED_SOFTMAX
from recbole_elastic.process_group import distributed_on_cuda, init_cpu_process_group
from recbole_elastic.schedule import learning_rate_schedule
from recbole_elastic.utils import RECBOLE_DIR, get_model

# RecBole's own loader, captured before ``register()`` installs the plugin's hook on RecBole's Config.
RECBOLE_UPDATE_INTERNAL_CONFIG = Config._update_internal_config_dict

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")

OVERRIDES_KEY = "model_overrides"
# The keys that place one process in a distributed run (RecBole reads them in Config._init_device).
DISTRIBUTED_KEYS = ("local_rank", "nproc", "world_size", "ip", "port", "offset")

BPR_DEFAULT_NEGATIVES = {"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False, "candidate_num": 0}


def shipped_protocols() -> List[str]:
    """Names of the evaluation protocols the plugin ships (``properties/protocol/<name>.yaml``)."""
    return sorted(os.path.splitext(name)[0] for name in os.listdir(os.path.join(PROPERTIES_DIR, "protocol")))


def protocol_file(name: str) -> str:
    """Path of the shipped protocol ``name`` (``--protocol=loo``), a config file for RecBole's ``config_file_list``
    or :func:`load_config_files`."""
    path = plugin_yaml("protocol", name)
    if path is None:
        raise ConfigError(
            f"Unknown protocol '{name}': the plugin ships {', '.join(shipped_protocols())} "
            "(recbole_elastic/properties/protocol/). Use --protocol=loo, or --config_files=YOUR.yaml for your own."
        )
    return path


def plugin_yaml(kind: str, name: str) -> Optional[str]:
    """Path of the plugin's ``properties/<kind>/<name>.yaml`` or None when the plugin ships none."""
    path = os.path.join(PROPERTIES_DIR, kind, f"{name}.yaml")
    return path if os.path.isfile(path) else None


def update_internal_config_dict(config: Config, file: str) -> Optional[Dict]:
    """The plugin's one change to RecBole's Config: load one of RecBole's internal YAMLs with RecBole's own
    loader, and the plugin's YAMLs around ``sample.yaml``.

    ``ElasticConfig`` uses it as its ``_update_internal_config_dict``; ``register()`` installs the same function on
    RecBole's ``Config``.

    RecBole loads, in order: overall, <model>.yaml, sample.yaml, <dataset>.yaml, quick-start YAMLs. Hooking the
    moment ``sample.yaml`` is read puts the plugin's model YAML exactly where a built-in model's sits. Then:

    * on the plugin's own run path (``ElasticConfig``), the plugin's dataset YAML follows the generic dataset
      defaults, and a dataset that neither RecBole nor the plugin has a YAML for loads every column of its files
      (RecBole's ``sample.yaml`` would keep only user and item ids, dropping the timestamp sequences sort by);
    * through ``register()`` (RecBole's own ``Config``), only plugin models change: their YAML, and negatives
      that follow ``loss_type`` as on the plugin's path. Built-in models' settings stay exactly RecBole's.
    """
    is_sample = os.path.basename(file) == "sample.yaml"
    model_file = plugin_yaml("model", config.model) if is_sample else None
    if model_file:
        RECBOLE_UPDATE_INTERNAL_CONFIG(config, model_file)
    loaded = RECBOLE_UPDATE_INTERNAL_CONFIG(config, file)
    if not is_sample:
        return loaded
    if isinstance(config, ElasticConfig):
        dataset_file = plugin_yaml("dataset", config.dataset)
        if dataset_file:
            dataset_keys = RECBOLE_UPDATE_INTERNAL_CONFIG(config, dataset_file) or {}
            config.parameters["Dataset"] += [key for key in dataset_keys if key not in config.parameters["Dataset"]]
        elif not os.path.isfile(os.path.join(RECBOLE_DIR, "properties", "dataset", f"{config.dataset}.yaml")):
            config.internal_config_dict["load_col"] = None  # RecBole's spelling of "every column"
    elif model_file and "train_neg_sample_args" not in config.external_config_dict:
        config.internal_config_dict["train_neg_sample_args"] = negatives_for(_loss_type(config))
    if model_file and _loss_type(config) == SAMPLED_SOFTMAX:
        # RecBole derives MODEL_INPUT_TYPE from CE or BPR only; the sampled softmax reads samples as CE does.
        config.internal_config_dict["MODEL_INPUT_TYPE"] = InputType.POINTWISE
    return loaded


def _loss_type(config: Config) -> Optional[str]:
    """The ``loss_type`` a config being loaded will have: the user's, else the YAML defaults' so far."""
    return config.external_config_dict.get("loss_type", config.internal_config_dict.get("loss_type"))


class ElasticConfig(Config):
    """RecBole ``Config`` with the plugin's YAML defaults; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        compat.apply()  # RecBole's Config reads numpy names that numpy 2 removed
        super().__init__(*args, **kwargs)

    _update_internal_config_dict = update_internal_config_dict

    def _load_cmd_line(self) -> Dict:
        return {}

    def _get_final_config_dict(self) -> Dict:
        final = super()._get_final_config_dict()
        final.setdefault("verbose_console", False)  # RecBole's config dump, model repr and info lines on the console
        if "show_progress" not in self.external_config_dict and not progress_bars_reach_a_terminal():
            final["show_progress"] = False
        align_negative_sampling(final, self.external_config_dict)
        learning_rate_schedule(final)  # a bad warmup_steps or lr_schedule stops the run before the data is read
        return final

    def _init_device(self) -> None:
        """RecBole's device set-up, plus distributed runs on CPU.

        A config without ``local_rank`` (one process) and a distributed config on CUDA go through RecBole's own
        ``_init_device`` unchanged (NCCL, ``cuda:local_rank``). RecBole hard-codes NCCL and CUDA for every
        distributed run, so on CPU (``gpu_id`` empty or no CUDA) this joins the same TCP rendezvous with gloo.
        """
        final = self.final_config_dict
        if "local_rank" not in final or distributed_on_cuda(final):
            super()._init_device()
        else:
            init_cpu_process_group(final)
        final["use_gpu"] = final["device"].type == "cuda"  # RecBole leaves True on a machine without a GPU


def progress_bars_reach_a_terminal() -> bool:
    """Whether RecBole's progress bars (tqdm, written to stderr) are drawn on a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def negatives_for(loss_type: Optional[str]) -> Optional[Dict]:
    """Default ``train_neg_sample_args`` for a sequential model's ``loss_type``: none for CE (it scores every
    item; RecBole raises otherwise) and SampledSoftmax (it draws its own), one uniform negative per positive for
    BPR."""
    return dict(BPR_DEFAULT_NEGATIVES) if loss_type == "BPR" else None


def align_negative_sampling(final: Dict, external: Dict) -> None:
    """Make ``train_neg_sample_args`` follow ``loss_type`` for sequential models, unless the user set it."""
    if final.get("MODEL_TYPE") != ModelType.SEQUENTIAL:
        return
    loss_type = final.get("loss_type")
    user_set = "train_neg_sample_args" in external
    negatives = final.get("train_neg_sample_args")
    if loss_type in ("CE", SAMPLED_SOFTMAX):
        if not user_set:
            final["train_neg_sample_args"] = negatives_for(loss_type)
        elif negatives not in (None, "None") and negatives.get("distribution") not in (None, "none", "None"):
            why = "scores every item" if loss_type == "CE" else "draws its own negatives (sampled_negatives)"
            raise ConfigError(
                f"loss_type={loss_type} {why}, so it takes no negative samples from RecBole, but "
                f"train_neg_sample_args is {negatives}. Remove train_neg_sample_args (or set it to ~), or use "
                "loss_type=BPR."
            )
    elif loss_type == "BPR":
        if not user_set and negatives is None:
            final["train_neg_sample_args"] = negatives_for(loss_type)
        elif negatives is None or negatives == "None":
            raise ConfigError(
                "loss_type=BPR needs negative samples, but train_neg_sample_args is ~. Remove it to get one uniform "
                "negative per positive, or set e.g. train_neg_sample_args: {distribution: uniform, sample_num: 1}."
            )


# Keys RecBole reads in code without a YAML default (distributed runs, derived values).
_KEYS_READ_IN_CODE = re.compile(r"""(?:config|_dict)(?:\[\s*|\.get\(\s*)["']([A-Za-z_][A-Za-z0-9_]*)["']""")


@functools.lru_cache(maxsize=1)
def known_config_keys() -> frozenset:
    """Every key RecBole or the plugin knows: their YAML defaults plus the keys their code reads."""
    import recbole

    keys = {"model", "dataset", "config_files", "group_offset", *DISTRIBUTED_KEYS}
    for package_dir in (os.path.dirname(recbole.__file__), os.path.dirname(os.path.abspath(__file__))):
        for path in glob.glob(os.path.join(package_dir, "properties", "**", "*.yaml"), recursive=True):
            if os.path.basename(path) in ("url.yaml", "kg_url.yaml"):
                continue
            with open(path, encoding="utf-8") as f:
                keys.update(yaml.load(f, Loader=yaml.FullLoader) or {})
        for path in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True):
            with open(path, encoding="utf-8") as f:
                keys.update(_KEYS_READ_IN_CODE.findall(f.read()))
    return frozenset(keys)


def check_config_keys(keys: Iterable[str], source: str) -> None:
    """Raise :class:`ConfigError` for a key neither RecBole nor the plugin knows, naming the closest known key.

    RecBole silently accepts any key, so ``--epoch=5`` would train the default 300 epochs.
    """
    known = known_config_keys()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise ConfigError(
                f"Unknown config key `{key}` ({source}): neither RecBole nor recbole-elastic reads it.{hint}"
            )


def load_config_files(config_files: Optional[Iterable[str]]) -> Dict:
    """Merge YAML config files (later wins), checking every key; ``model_overrides`` sections merge per model.

    A ``model_overrides`` section, ``{ModelName: {key: value}}``, holds settings for one model only.
    """
    merged: Dict = {}
    for path in config_files or []:
        if not os.path.isfile(path):
            raise ConfigError(f"Config file not found: {path}")
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=yaml.FullLoader) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a YAML mapping of key: value, not {type(loaded).__name__}")
        for model, overrides in (loaded.pop(OVERRIDES_KEY, None) or {}).items():
            check_config_keys(overrides, f"{path}, {OVERRIDES_KEY}.{model}")
            merged.setdefault(OVERRIDES_KEY, {}).setdefault(model, {}).update(overrides)
        check_config_keys(loaded, path)
        merged.update(loaded)
    return merged


# The CLI's default budget (the embedded default finishes in about 9 minutes on 2 CPU cores, installs included);
# it sits below everything the user wrote, config files included. --epochs=300 is RecBole's default.
QUICK_START_BUDGET = {"epochs": 8}


def run_settings(
    model: str,
    settings: Optional[Dict] = None,
    command_line: Optional[Dict] = None,
    *,
    quick_start_budget: bool = False,
    resumed_config: Optional[Config] = None,
    seed: Optional[int] = None,
    process: Optional[Dict] = None,
) -> Dict:
    """One run's ``config_dict``. Every run path (CLI, sweep, resume, each distributed rank) builds it here.

    From lowest to highest precedence:

    1. :data:`QUICK_START_BUDGET`, when ``quick_start_budget`` (the CLI's runs, not a resumed one);
    2. the settings the ``resumed_config`` checkpoint was trained with, less its process layout
       (:data:`DISTRIBUTED_KEYS`: the resumed run's layout is its own);
    3. ``settings`` (what :func:`load_config_files` read), then its ``model_overrides`` section for ``model``;
    4. ``command_line``;
    5. ``seed`` and ``process`` (a distributed rank's layout: keys of :data:`DISTRIBUTED_KEYS`).
    """
    settings = settings or {}
    saved: Dict = {}
    if resumed_config is not None:
        saved = getattr(resumed_config, "external_config_dict", {})
        saved = {key: value for key, value in saved.items() if key not in DISTRIBUTED_KEYS}
    return {
        **(QUICK_START_BUDGET if quick_start_budget else {}),
        **saved,
        **{key: value for key, value in settings.items() if key != OVERRIDES_KEY},
        **settings.get(OVERRIDES_KEY, {}).get(model, {}),
        **(command_line or {}),
        **({} if seed is None else {"seed": seed}),
        **(process or {}),
    }


def changed_on_resume(resumed_config: Config, config_dict: Dict, command_line: Dict) -> Dict[str, tuple]:
    """The settings a resumed run changes: ``{key: (checkpoint's value, new value, "command line" | "config files")}``.

    ``config_dict`` is :func:`run_settings`' output for the resumed run; its values are compared as RecBole will
    read them (``--learning_rate=0.002`` is the float 0.002). A key the checkpoint's run did not set is compared
    with the value that run had from the model's and dataset's defaults.
    """
    given = getattr(resumed_config, "external_config_dict", {})
    final = getattr(resumed_config, "final_config_dict", {})
    # Config._convert_config_dict is RecBole's own string-to-value rule; it reads nothing from the instance.
    new_values = resumed_config._convert_config_dict(dict(config_dict))
    changed = {}
    for key, value in new_values.items():
        if key in DISTRIBUTED_KEYS:
            continue
        old = given[key] if key in given else final.get(key)
        if old != value:
            changed[key] = (old, value, "command line" if key in (command_line or {}) else "config files")
    return changed


def build_config(
    model: str = "ELASTIC",
    dataset: str = "ml-100k",
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
) -> ElasticConfig:
    """RecBole config for ``model`` (plugin or built-in) on ``dataset`` with the plugin's YAML defaults."""
    return ElasticConfig(
        model=get_model(model), dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )
