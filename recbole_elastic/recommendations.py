"""Top-k recommendations from a saved checkpoint of any RecBole sequential model (plugin or built-in).

* :func:`recommend`: for the dataset's users (all, or those named by external token). A user's history is
  everything the dataset holds for them (training, validation and test interactions, in time order): the model
  reads its latest ``MAX_ITEM_LIST_LENGTH`` items and the recommendation is what comes next after all of them.
* :func:`recommend_for_histories`: for item histories from outside the dataset (new users, or events after
  training), given as lists of external item tokens.

Items the history holds are excluded unless ``keep_seen``; the padding item never appears. Results are a DataFrame
with columns ``user, rank, item, score`` (external tokens, rank from 1); :func:`write_recommendations` writes one
as a TSV atomically. The checkpoint's data split is rebuilt as for evaluation
(:func:`recbole_elastic.quick_start.load_data_and_model`); nothing is trained.

RecBole's ``recbole.utils.case_study.full_sort_topk`` scores a sequential user's test sample, whose history ends
before the held-out test item, and excludes no history for sequential models; here the held-out items are part
of the history, so the dataset's last sample of each user is extended by its own target (:func:`extend_by_target`).
"""

import os
from logging import getLogger
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from tqdm import tqdm

from recbole.data.interaction import Interaction
from recbole.data.transform import construct_transform
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import ModelType

from recbole_elastic.atomic import atomic_path
from recbole_elastic.errors import ConfigError
from recbole_elastic.evaluate import read_checkpoint_config
from recbole_elastic.quick_start import load_data_and_model

RESULT_COLUMNS = ["user", "rank", "item", "score"]
# Users scored at once. Larger batches are no faster on a CPU: a causal model's [B, N, k, H] states then cost
# more in allocation (system time) than they save (benchmarks/results/recommend.md).
DEFAULT_BATCH_SIZE = 64

History = Sequence[Union[str, int]]


class Recommender:
    """A checkpoint's model and dataset, loaded once to recommend for many users or histories."""

    def __init__(self, checkpoint: str) -> None:
        saved = read_checkpoint_config(checkpoint)  # a missing or unreadable file: ConfigError
        if saved["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            raise ConfigError(
                f"{checkpoint} holds {saved['model']}, a {saved['MODEL_TYPE'].name.lower()} model: recommending "
                "from item histories needs a sequential model's checkpoint (e.g. ELASTIC, CausalELASTIC, SASRec)."
            )
        self.checkpoint = checkpoint
        self.config, self.model, self.dataset, _, _, _ = load_data_and_model(checkpoint)
        self.model.eval()
        if type(self.model).full_sort_predict is AbstractRecommender.full_sort_predict:
            raise ConfigError(
                f"{self.config['model']} cannot score every item at once (it has no full_sort_predict), so it "
                "cannot recommend from the whole catalogue."
            )
        self.transform = construct_transform(self.config)  # what RecBole's loaders apply to every batch
        self.uid_field = self.dataset.uid_field
        self.iid_field = self.dataset.iid_field
        self.item_list_field = self.config["ITEM_ID_FIELD"] + self.config["LIST_SUFFIX"]
        self.length_field = self.config["ITEM_LIST_LENGTH_FIELD"]
        self.max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        self._last_sample: Optional[np.ndarray] = None
        self._seen: Optional[scipy.sparse.csr_matrix] = None

    # The dataset's users -------------------------------------------------------------------------------------

    def user_ids(self, users: Optional[Iterable[str]] = None) -> np.ndarray:
        """Internal ids of ``users`` (external tokens; default every user the dataset has a sequence for)."""
        last_sample = self.last_samples()
        if users is None:
            ids = np.flatnonzero(last_sample >= 0)
            skipped = self.dataset.user_num - 1 - len(ids)
            if skipped:
                getLogger(__name__).warning(
                    f"{skipped} users have a single interaction (no sequence in the dataset) and get no "
                    "recommendations; recommend_for_histories takes their items."
                )
            return ids
        users = [users] if isinstance(users, str) else users  # one token, not its characters
        tokens = list(dict.fromkeys(str(user) for user in users))  # each user once, in the order given
        token_ids = self.dataset.field2token_id[self.uid_field]
        unknown = [token for token in tokens if token not in token_ids or token_ids[token] == 0]
        if unknown:
            raise ConfigError(
                f"{len(unknown)} of the {len(tokens)} users are not in dataset '{self.config['dataset']}' (after "
                f"its filtering): {_some(unknown)}. Users are the {self.uid_field} tokens of its .inter file; for "
                "anyone else use recommend_for_histories."
            )
        if not tokens:
            raise ConfigError("No users given: pass at least one user token, or none to recommend for every user.")
        ids = np.array([token_ids[token] for token in tokens], dtype=np.int64)
        without = [token for token, uid in zip(tokens, ids) if last_sample[uid] < 0]
        if without:
            raise ConfigError(
                f"{len(without)} users have a single interaction, so the dataset holds no sequence for them: "
                f"{_some(without)}. Pass their items to recommend_for_histories."
            )
        return ids

    def last_samples(self) -> np.ndarray:
        """``[user_num]``: each user's last sample in time order (the one whose target is their latest
        interaction), -1 for users without one. Ties in time keep the dataset's order, which is RecBole's
        augmentation order (stable sorts) unless ``eval_args.order`` shuffled it."""
        if self._last_sample is None:
            inter = self.dataset.inter_feat
            users = inter[self.uid_field].numpy()
            time_field = self.dataset.time_field
            in_time = np.argsort(inter[time_field].numpy(), kind="stable") if time_field in inter else None
            order = np.arange(len(users)) if in_time is None else in_time
            by_user = order[np.argsort(users[order], kind="stable")]  # each user's samples together, in time order
            sorted_users = users[by_user]
            ends = np.flatnonzero(np.r_[sorted_users[1:] != sorted_users[:-1], True])
            self._last_sample = np.full(self.dataset.user_num, -1, dtype=np.int64)
            self._last_sample[sorted_users[ends]] = by_user[ends]
        return self._last_sample

    def seen_items(self) -> scipy.sparse.csr_matrix:
        """``[user_num, item_num]``: 1 where the dataset holds an interaction of the user with the item (every
        sample's target, and the history of each user's shortest sample, which reaches back to their first)."""
        if self._seen is None:
            inter = self.dataset.inter_feat
            users = inter[self.uid_field].numpy()
            lengths = inter[self.length_field].numpy()
            by_length = np.lexsort((lengths, users))
            firsts = by_length[np.r_[True, users[by_length][1:] != users[by_length][:-1]]]
            first_samples = self.dataset[firsts]
            first_history = first_samples[self.item_list_field].numpy()
            in_history = np.arange(first_history.shape[1]) < first_samples[self.length_field].numpy()[:, None]
            rows = np.r_[users, np.broadcast_to(users[firsts][:, None], first_history.shape)[in_history]]
            columns = np.r_[inter[self.iid_field].numpy(), first_history[in_history]]
            shape = (self.dataset.user_num, self.dataset.item_num)
            seen = scipy.sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=shape)
            seen.sum_duplicates()
            self._seen = seen
        return self._seen

    def histories(self, uids: np.ndarray) -> Interaction:
        """The model's input for users ``uids``: their latest ``MAX_ITEM_LIST_LENGTH`` interactions, joined with
        the dataset's features and transformed as RecBole's loaders do."""
        samples = self.dataset.__getitem__(self.last_samples()[uids], join=False)
        return self.transform(self.dataset, self.dataset.join(extend_by_target(self.dataset, samples)))

    def for_users(
        self,
        users: Optional[Iterable[str]] = None,
        topk: int = 10,
        keep_seen: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        show_progress: bool = False,
    ) -> pd.DataFrame:
        """Top ``topk`` items for ``users`` (external tokens; default every user): see :func:`recommend`."""
        topk = check_topk(topk)
        uids = self.user_ids(users)
        seen = None if keep_seen else self.seen_items()
        batches = (
            (self.histories(chunk), None if seen is None else seen[chunk])
            for chunk in np.array_split(uids, max(1, -(-len(uids) // batch_size)))
        )
        labels = self.dataset.field2id_token[self.uid_field][uids]
        return self._top_items(batches, labels, topk, len(uids), show_progress)

    # Histories from outside the dataset ----------------------------------------------------------------------

    def for_histories(
        self,
        histories: Union[Sequence[History], Mapping[str, History]],
        topk: int = 10,
        keep_seen: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> pd.DataFrame:
        """Top ``topk`` items after each history: see :func:`recommend_for_histories`."""
        topk = check_topk(topk)
        if isinstance(histories, Mapping):
            labels, item_lists = list(histories.keys()), list(histories.values())
        else:
            labels, item_lists = list(range(len(histories))), list(histories)
        if isinstance(histories, (str, bytes)) or any(isinstance(items, (str, bytes)) for items in item_lists):
            raise ConfigError("histories are lists of item tokens, one list per user (e.g. [['1', '29'], ['50']]).")
        token_ids = self.dataset.field2token_id[self.iid_field]
        known, unknown = [], 0
        for items in item_lists:
            ids = [token_ids.get(str(item), 0) for item in items]
            unknown += sum(1 for item in ids if item == 0)
            known.append([item for item in ids if item != 0])
        empty = [label for label, ids in zip(labels, known) if not ids]
        if empty:
            raise ConfigError(
                f"{len(empty)} histories hold no item of dataset '{self.config['dataset']}' (empty, or only unknown "
                f"item tokens): {_some(empty)}. A recommendation needs at least one known {self.iid_field} token."
            )
        if unknown:
            getLogger(__name__).warning(
                f"{unknown} item tokens are not in dataset '{self.config['dataset']}' and were skipped."
            )
        n_items = self.dataset.item_num

        def batches() -> Iterator[Tuple[Interaction, Optional[scipy.sparse.csr_matrix]]]:
            for start in range(0, len(known), batch_size):
                chunk = known[start : start + batch_size]
                latest = [ids[-self.max_len :] for ids in chunk]
                item_seq = torch.zeros(len(chunk), self.max_len, dtype=torch.long)
                for row, ids in enumerate(latest):
                    item_seq[row, : len(ids)] = torch.tensor(ids)
                interaction = Interaction(
                    {
                        self.uid_field: torch.zeros(len(chunk), dtype=torch.long),  # the padding user: not a known one
                        self.item_list_field: item_seq,
                        self.length_field: torch.tensor([len(ids) for ids in latest]),
                    }
                )
                rows = np.repeat(np.arange(len(chunk)), [len(ids) for ids in chunk])
                columns = np.concatenate([np.asarray(ids, dtype=np.int64) for ids in chunk])
                seen = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(chunk), n_items))
                yield self.transform(self.dataset, interaction), None if keep_seen else seen

        return self._top_items(batches(), np.asarray(labels, dtype=object), topk, len(known), False)

    # Scoring -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _top_items(
        self,
        batches: Iterable[Tuple[Interaction, Optional[scipy.sparse.csr_matrix]]],
        labels: np.ndarray,
        topk: int,
        total: int,
        show_progress: bool,
    ) -> pd.DataFrame:
        """Score every item for each batch's histories and keep the top ``topk`` (padding and ``seen`` excluded)."""
        k = min(topk, self.dataset.item_num)
        device = self.config["device"]
        scores_out, items_out = [], []
        progress = tqdm(total=total, unit="user", desc="recommend", disable=not show_progress)
        for interaction, seen in batches:
            scores = self.model.full_sort_predict(interaction.to(device)).view(-1, self.dataset.item_num).float()
            scores[:, 0] = -torch.inf  # the padding item
            if seen is not None:
                rows, columns = seen.nonzero()
                scores[torch.from_numpy(rows).long(), torch.from_numpy(columns).long()] = -torch.inf
            top_scores, top_items = torch.topk(scores, k, dim=1)
            scores_out.append(top_scores.cpu())
            items_out.append(top_items.cpu())
            progress.update(len(scores))
        progress.close()
        scores = torch.cat(scores_out).numpy() if scores_out else np.zeros((0, k), dtype=np.float32)
        items = torch.cat(items_out).numpy() if items_out else np.zeros((0, k), dtype=np.int64)
        kept = np.isfinite(scores)  # fewer than topk items left to recommend: no row for the excluded ones
        frame = pd.DataFrame(
            {
                "user": np.repeat(labels, k).reshape(-1, k)[kept],
                "rank": np.broadcast_to(np.arange(1, k + 1), scores.shape)[kept],
                "item": self.dataset.field2id_token[self.iid_field][items[kept]],
                "score": scores[kept],
            },
            columns=RESULT_COLUMNS,
        )
        return frame


def extend_by_target(dataset, samples: Interaction) -> Interaction:
    """Each sample's history followed by its own target: the next sample RecBole would build, with every list
    field (``item_id_list``, ``timestamp_list``, ...) shifted by one when the history is already full."""
    length_field = dataset.item_list_length_field
    lengths = samples[length_field]
    rows = torch.arange(len(lengths))
    extended = {}
    for field in samples.columns:
        list_field = getattr(dataset, f"{field}_list_field", None)
        if list_field is None or list_field not in samples.columns:
            continue
        values = samples[list_field].clone()
        width = values.size(1)
        full = lengths >= width
        values[full, :-1] = samples[list_field][full, 1:]
        values[rows, torch.where(full, width - 1, lengths)] = samples[field]
        extended[list_field] = values
        extended[length_field] = torch.clamp(lengths + 1, max=width)
    samples.update(Interaction(extended))
    return samples


def check_topk(topk: Any) -> int:
    """``topk`` as an int; :class:`ConfigError` unless it is a positive integer."""
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ConfigError(f"topk = {topk!r} is invalid: it must be a positive integer (--topk=10).")
    return int(topk)


def _some(values: List, shown: int = 5) -> str:
    """The first few values, quoted, and how many more."""
    text = ", ".join(repr(value) for value in values[:shown])
    return text + (f" and {len(values) - shown} more" if len(values) > shown else "")


def recommend(
    checkpoint: str,
    users: Optional[Iterable[str]] = None,
    topk: int = 10,
    keep_seen: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    show_progress: bool = False,
) -> pd.DataFrame:
    """Top ``topk`` items for the dataset's ``users`` (external tokens; default every user with a sequence).

    Each user's history is everything the dataset holds for them (training, validation and test interactions);
    the model reads its latest ``MAX_ITEM_LIST_LENGTH`` items in time order. Items in the history are excluded
    unless ``keep_seen``. Returns a DataFrame with columns ``user, rank, item, score``: external tokens, rank
    1..topk, highest score first (fewer rows for a user with fewer items left to recommend).
    """
    return Recommender(checkpoint).for_users(users, topk, keep_seen, batch_size, show_progress)


def recommend_for_histories(
    checkpoint: str,
    histories: Union[Sequence[History], Mapping[str, History]],
    topk: int = 10,
    keep_seen: bool = False,
) -> pd.DataFrame:
    """Top ``topk`` items after each of ``histories``: lists of external item tokens in time order (a list of
    lists, or a mapping from a name to a list; the result's ``user`` column holds the list index or the name).

    Tokens the dataset does not know are skipped and counted in one logged warning; a history left empty raises
    :class:`ConfigError`. The model reads the latest ``MAX_ITEM_LIST_LENGTH`` known items; a model that also reads
    a user id sees the padding user. Returns the DataFrame of :func:`recommend`.
    """
    return Recommender(checkpoint).for_histories(histories, topk, keep_seen)


def read_user_file(path: str) -> List[str]:
    """External user tokens, one per line (blank lines skipped); :class:`ConfigError` if unreadable or empty."""
    try:
        with open(path, encoding="utf-8") as f:
            users = [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise ConfigError(
            f"Cannot read the users file {path} ({error.strerror}): pass --users=FILE, one user token a line."
        ) from None
    if not users:
        raise ConfigError(f"The users file {path} lists no user: write one user token a line.")
    return users


def check_output_path(path: str, overwrite: bool = False) -> None:
    """Refuse an existing ``path`` unless ``overwrite``, and a folder that does not exist (before any work)."""
    if os.path.isdir(path):
        raise ConfigError(
            f"--output={path} is a folder: give a file name, e.g. --output={os.path.join(path, 'recs.tsv')}."
        )
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"The output file {path} exists: pass --overwrite to replace it, or choose another --output.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"The folder of --output={path} does not exist: create {folder} first.")


def write_recommendations(frame: pd.DataFrame, path: str, overwrite: bool = False) -> None:
    """Write ``frame`` as a TSV with a header, atomically: ``path`` is either untouched or complete."""
    check_output_path(path, overwrite)
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, sep="\t", index=False)


def recommend_to_file(
    checkpoint: str,
    output: str,
    topk: int = 10,
    users_file: Optional[str] = None,
    keep_seen: bool = False,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Dict[str, int]:
    """The command line's ``--recommend``: check every input, recommend, write ``output``; the row and user
    counts."""
    check_topk(topk)
    check_output_path(output, overwrite)
    users = read_user_file(users_file) if users_file else None
    frame = Recommender(checkpoint).for_users(users, topk, keep_seen, show_progress=show_progress)
    write_recommendations(frame, output, overwrite)
    return {"rows": len(frame), "users": frame["user"].nunique()}
