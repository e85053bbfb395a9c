"""Model lookup across the plugin and RecBole, and dataset availability checks."""

import contextlib
import difflib
import importlib
import os
import shutil
from logging import getLogger
from typing import Dict, Iterator, List, Optional, Type

import torch
import yaml

import recbole
from recbole.model.abstract_recommender import AbstractRecommender

from recbole_elastic.errors import DatasetFormatError, DatasetNotFoundError, UnknownModelError

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
    if not all(os.path.isfile(path) for path in needed):
        _download_dataset(name, dataset_dir, needed)
    for path in needed:
        check_atomic_header(config, path)


def _download_dataset(name: str, dataset_dir: str, needed: List[str]) -> None:
    """Fetch RecBole's archive of ``name`` into ``dataset_dir``; :class:`DatasetNotFoundError` when impossible."""
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


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def check_atomic_header(config, path: str) -> None:
    """Check an atomic file's header against the config before RecBole parses it (RecBole's own errors here are
    unpacking errors or KeyErrors deep in its dataset code). Raises :class:`DatasetFormatError`."""
    separator = config["field_separator"] or "\t"
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n")
    columns = header.split(separator)
    shown_separator = repr(separator)
    if len(columns) == 1:
        others = [s for s in ("\t", ",", ";", " ", "|") if s != separator and s in header]
        guess = f"; the header looks separated by {others[0]!r}" if others else ""
        raise DatasetFormatError(
            f"{path}: the header '{header}' has a single column with field_separator={shown_separator}{guess}. "
            f"Separate columns with {shown_separator} or set field_separator to the file's separator."
        )
    names = []
    for column in columns:
        name, colon, kind = column.partition(":")
        if not colon or kind not in ATOMIC_TYPES:
            raise DatasetFormatError(
                f"{path}: header column '{column}' is not 'name:type' with type in {list(ATOMIC_TYPES)} "
                f"(e.g. 'user_id:token', 'timestamp:float')."
            )
        names.append(name)
    wanted = list((config["load_col"] or {}).get("inter", []) or []) if path.endswith(".inter") else []
    wanted += [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]] if path.endswith(".inter") else []
    missing = [field for field in dict.fromkeys(wanted) if field not in names]
    if missing:
        raise DatasetFormatError(
            f"{path}: column(s) {missing} are needed (USER_ID_FIELD, ITEM_ID_FIELD and load_col) but the file has "
            f"{names}. Add them to the file, or change load_col / the *_FIELD settings."
        )


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary name beside ``path``; whatever is written there replaces ``path`` in one rename.

    Readers never see half a file. If nothing was written under the temporary name (in a distributed run only
    rank 0 saves), ``path`` is left as it was; if the write fails, the temporary file is removed.
    """
    temporary = f"{path}.{os.getpid()}.partial"
    try:
        yield temporary
        if os.path.exists(temporary):
            os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def atomic_write(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
        f.write(text)


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
    """What a sequential model reads from its dataset: the number of item ids (padding 0 included)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items


def model_defaults(model_name: str) -> Dict:
    """A model's YAML defaults: the plugin's ``properties/model/<name>.yaml``, else RecBole's."""
    from recbole_elastic.config import plugin_yaml

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
