"""The dataset side of a run: atomic files on disk (checked, or downloaded), then RecBole's dataset and loaders.

RecBole's own download calls ``torch.distributed.barrier()`` (crashes outside distributed runs) and ``input()``
for large archives, and its parse errors surface as tracebacks deep in its dataset code; here every failure is a
:class:`~recbole_elastic.errors.DatasetNotFoundError` or :class:`~recbole_elastic.errors.DatasetFormatError`
naming the file and what to do.
"""

import os
import shutil
from logging import getLogger
from typing import Any, List, Optional, Tuple

import yaml

from recbole.data import data_preparation

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
