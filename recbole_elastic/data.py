"""The dataset side of a run: atomic files on disk (checked, or downloaded), then RecBole's dataset and loaders.

RecBole's own download calls ``torch.distributed.barrier()`` (crashes outside distributed runs) and ``input()``
for large archives, and its parse errors surface as tracebacks deep in its dataset code; here every failure is a
:class:`~recbole_elastic.errors.DatasetNotFoundError` or :class:`~recbole_elastic.errors.DatasetFormatError`
naming the file and what to do.
"""

import os
import shutil
from logging import getLogger
from typing import Any, List, Optional, Set, Tuple

import yaml

from recbole.data import data_preparation
from recbole.utils import ModelType

from recbole_elastic.errors import DatasetFormatError, DatasetNotFoundError
from recbole_elastic.utils import RECBOLE_DIR
from recbole_elastic.windows import all_positions_train_data, check_window_settings, create_dataset


def prepare_data(config) -> Tuple[Any, Any, Any, Any]:
    """``(dataset, train_data, valid_data, test_data)`` through RecBole, with errors a user can act on.

    Sequential models get lazily built prefix samples, and all-position training windows with
    ``train_all_positions`` (``recbole_elastic.windows``).
    """
    check_window_settings(config)
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
        bad_value = first_unparsable_value(config)
        if bad_value:
            raise DatasetFormatError(bad_value) from error
        raise DatasetFormatError(
            f"Could not read {where}: {error}. Check that every value matches its header type (':float' "
            "columns hold numbers) and that the columns match field_separator."
        ) from error
    except (KeyError, TypeError, IndexError) as error:
        raise DatasetFormatError(f"Could not read {where}: {type(error).__name__}: {error}.") from error
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    train_data = all_positions_train_data(config, train_data)
    return dataset, train_data, valid_data, test_data


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
        _download_dataset(name, dataset_dir, needed, example_header(config))
    for path in needed:
        check_atomic_header(config, path)


def example_header(config) -> str:
    """The ``.inter`` header this config reads, e.g. ``user_id:token\\titem_id:token\\ttimestamp:float``."""
    ids = (config["USER_ID_FIELD"], config["ITEM_ID_FIELD"])
    fields = list((config["load_col"] or {}).get("inter") or [*ids, config["TIME_FIELD"]])
    return "\\t".join(f"{field}:{'token' if field in ids else 'float'}" for field in fields)


def _download_dataset(name: str, dataset_dir: str, needed: List[str], header: str) -> None:
    """Fetch RecBole's archive of ``name`` into ``dataset_dir``; :class:`DatasetNotFoundError` when impossible.

    On failure, whatever the attempt left (the folder it created, or files in an existing folder) is removed.
    """
    where = (
        f"Put RecBole atomic files ({name}.inter with the header '{header}'; optionally {name}.user and "
        f"{name}.item) in {dataset_dir}/, or set data_path to the folder that holds a '{name}/' folder "
        "(--data_path=/path/to/datasets)."
    )
    looked_for = ", ".join(needed)
    url = _download_url(name)
    if url is None:
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found: looked for {looked_for}, and '{name}' is not one of RecBole's "
            f"downloadable datasets. {where}"
        )
    from recbole.utils.url import download_url, extract_zip, rename_atomic_files

    existing = set(os.listdir(dataset_dir)) if os.path.isdir(dataset_dir) else None
    created = _first_missing_folder(dataset_dir)  # e.g. RecBole's default 'dataset/' above the dataset's folder
    getLogger().info(f"Dataset '{name}' not found at {dataset_dir}; downloading {url}")
    try:
        os.makedirs(dataset_dir, exist_ok=True)
        archive = download_url(url, dataset_dir)
        extract_zip(archive, dataset_dir)
        os.unlink(archive)
        rename_atomic_files(dataset_dir, os.path.splitext(os.path.basename(archive))[0], name)
        if not all(os.path.isfile(path) for path in needed):
            raise FileNotFoundError(f"the archive has no {looked_for}")
    except Exception as error:  # network, disk or archive errors all end the same way for the user
        _remove_download(dataset_dir, existing, created)
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found: looked for {looked_for}, and downloading it from {url} failed "
            f"({type(error).__name__}: {error}). {where}"
        ) from error


def _first_missing_folder(path: str) -> Optional[str]:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _remove_download(dataset_dir: str, existing: Optional[Set[str]], created: Optional[str]) -> None:
    """Undo a failed download: the folders it created, or else only the entries it added to ``dataset_dir``."""
    if created:
        shutil.rmtree(created, ignore_errors=True)
        return
    for entry in set(os.listdir(dataset_dir)) - (existing or set()):
        path = os.path.join(dataset_dir, entry)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def first_unparsable_value(config) -> Optional[str]:
    """A message naming the file, line and column of the first value that does not parse as its header type
    (``float``, or each element of ``float_seq``), searching the dataset's atomic files; None if every value does.

    RecBole's own error (a pandas ``ValueError``) names neither; this runs only after loading has failed.
    """
    separator = config["field_separator"] or "\t"
    seq_separator = config["seq_separator"] or " "
    folder = config["data_path"]
    for suffix in ("inter", "user", "item"):
        path = os.path.join(folder, f"{config['dataset']}.{suffix}")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split(separator)
            kinds = [column.partition(":")[2] for column in header]
            for line_number, line in enumerate(f, start=2):
                values = line.rstrip("\r\n").split(separator)
                for column, kind, value in zip(header, kinds, values):
                    elements = value.split(seq_separator) if kind == "float_seq" else [value]
                    if kind in ("float", "float_seq") and not all(_parses_as_float(e) for e in elements if e):
                        return (
                            f"{path}, line {line_number}, column '{column}': '{value}' is not a number. Fix the "
                            f"value, or declare the column as ':token' if it is not numeric."
                        )
    return None


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    wanted = []
    if path.endswith(".inter"):
        wanted = list((config["load_col"] or {}).get("inter", []) or [])
        wanted += [config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]]
        if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            wanted.append(config["TIME_FIELD"])  # sequences are ordered by it
    missing = [field for field in dict.fromkeys(wanted) if field not in names]
    if missing:
        raise DatasetFormatError(
            f"{path}: column(s) {missing} are needed (USER_ID_FIELD, ITEM_ID_FIELD, TIME_FIELD for sequential "
            f"models, and load_col) but the file has {names}; this run reads the header '{example_header(config)}'. "
            "Add them to the file, or change load_col / the *_FIELD settings."
        )
