"""Sequence windows for long histories: RecBole's prefix samples built lazily, and all-position training windows.

RecBole's ``SequentialDataset.data_augmentation`` makes one sample per prefix (a user with L interactions gives
L - 1 samples) and stores, for every field, a dense ``[samples, MAX_ITEM_LIST_LENGTH]`` history tensor: host memory
grows as interactions x N.

* :class:`LazySequentialDataset` (the run path's default for sequential models; ``lazy_sequence_windows: False``
  falls back to RecBole's dataset) yields exactly RecBole's samples, in RecBole's order, but stores each
  interaction once (sorted by user, then time) plus two integers per sample (its target row and history length).
  Each batch's ``[B, N]`` history windows are gathered when the batch is drawn (:class:`LazySequenceInteraction`).
* :class:`AllPositionsTrainDataLoader` (``train_all_positions: True``, for models with ``forward_all_positions``)
  trains on user windows instead of prefixes, with the next item at every position as its target; valid and test
  stay RecBole's. See its docstring for the windows and their stride.
"""

import importlib
import os
import pickle
from logging import getLogger
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from recbole.data import create_dataset as recbole_create_dataset
from recbole.data.dataloader import NegSampleDataLoader, TrainDataLoader
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import InputType, ModelType

from recbole_elastic.atomic import atomic_path
from recbole_elastic.errors import ConfigError
from recbole_elastic.loading import FastLoadingMixin, dataset_cache_file
from recbole_elastic.model.all_positions import target_sequence_fields
from recbole_elastic.utils import get_model


class LazySequenceInteraction(Interaction):
    """RecBole's prefix samples as an ``Interaction`` view: the interactions once, and per sample its target row
    and history length.

    Sample i is the interaction at row ``target_rows[i]`` (every field), its history length ``lengths[i]`` (RecBole's
    ``item_length``) and, for every field but the user id, the ``<field>_list`` of the ``lengths[i]`` rows before the
    target, left-aligned and zero-padded to ``max_len`` as RecBole's augmentation builds them. The interactions must
    be sorted by user, then time, so that a history is a run of consecutive rows.

    Indexing by a field name gives that column for every sample; indexing by anything else gives another view (the
    dataset splits are views); :meth:`materialize` builds the dense ``Interaction`` of some samples (a batch).
    ``sort``, ``shuffle`` and ``drop`` behave as ``Interaction``'s. It is an ``Interaction`` (RecBole checks for
    one before dropping a column); ``Interaction`` methods not overridden here read the dense samples
    (``interaction``), and the two that would change them in place (``update``, ``add_prefix``) raise.
    """

    def __init__(
        self,
        interactions: Interaction,
        target_rows: torch.Tensor,
        lengths: torch.Tensor,
        max_len: int,
        list_fields: Dict[str, str],
        length_field: str,
        columns: Optional[List[str]] = None,
    ) -> None:
        # Interaction.__init__ is not called: it would hold every field densely.
        self.interactions = interactions
        self.target_rows = target_rows
        self.lengths = lengths
        self.max_len = max_len
        self.list_fields = list_fields  # list field -> the field it lists
        self.length_field = length_field
        # RecBole's column order: the target's fields, the history length, then the lists.
        self._columns = columns if columns is not None else [*interactions.columns, length_field, *list_fields]

    def __len__(self) -> int:
        return len(self.target_rows)

    @property
    def length(self) -> int:
        return len(self.target_rows)

    @property
    def columns(self) -> List[str]:
        return list(self._columns)

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __contains__(self, field: str) -> bool:
        return field in self._columns

    def __getitem__(self, index):
        if isinstance(index, str):
            return self._column(index)
        return self.subset(index)

    def _column(self, field: str) -> torch.Tensor:
        if field not in self._columns:
            raise KeyError(field)
        if field == self.length_field:
            return self.lengths
        if field in self.list_fields:
            return self.materialize(slice(None))[field]  # dense, as RecBole would hold it
        return self.interactions[field][self.target_rows]

    @staticmethod
    def _index(index):
        """An index torch accepts (slice, bool mask or int64 positions) from what RecBole passes."""
        if isinstance(index, slice) or isinstance(index, torch.Tensor):
            return index
        if isinstance(index, range):
            return torch.arange(index.start, index.stop, index.step)
        array = np.asarray(index)
        return torch.from_numpy(array if array.dtype == np.bool_ else array.astype(np.int64))

    def subset(self, index) -> "LazySequenceInteraction":
        """Another view holding the samples ``index`` (positions, a bool mask or a slice)."""
        index = self._index(index)
        return LazySequenceInteraction(
            self.interactions,
            self.target_rows[index],
            self.lengths[index],
            self.max_len,
            self.list_fields,
            self.length_field,
            self._columns,
        )

    def materialize(self, index) -> Interaction:
        """The samples ``index`` as RecBole's augmentation holds them: a dense ``Interaction``."""
        index = self._index(index)
        rows = self.target_rows[index]
        lengths = self.lengths[index]
        positions = torch.arange(self.max_len)
        in_history = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B N]
        # Each history's rows, left-aligned; padding reads row 0 and is zeroed (a plain gather: no boolean index).
        history_rows = torch.where(in_history, (rows - lengths).unsqueeze(1) + positions, 0)
        data = {}
        for column in self._columns:
            if column == self.length_field:
                data[column] = lengths
            elif column in self.list_fields:
                source = self.interactions[self.list_fields[column]]
                padding = ~in_history.view(in_history.shape + (1,) * (source.dim() - 1))
                data[column] = source[history_rows].masked_fill_(padding, 0)  # [B N ...], as RecBole's zeros
            else:
                data[column] = self.interactions[column][rows]
        return Interaction(data)

    @property
    def interaction(self) -> Dict[str, torch.Tensor]:
        """Every sample, dense (as ``Interaction.interaction``)."""
        return self.materialize(slice(None)).interaction

    def _reindex(self, index) -> None:
        index = self._index(index)
        self.target_rows = self.target_rows[index]
        self.lengths = self.lengths[index]

    def sort(self, by, ascending=True) -> None:
        """Sort the samples in place, exactly as ``Interaction.sort`` (stable, last key first)."""
        by = [by] if isinstance(by, str) else list(by)
        ascending = [ascending] * len(by) if isinstance(ascending, bool) else list(ascending)
        for field, up in zip(by[::-1], ascending[::-1]):
            key = self._column(field)
            key = key if key.dim() == 1 else key[..., 0]
            index = np.argsort(key.numpy(), kind="stable")
            self._reindex(index if up else index[::-1].copy())

    def shuffle(self) -> None:
        """Shuffle the samples in place, drawing the same permutation as ``Interaction.shuffle``."""
        self._reindex(torch.randperm(self.length))

    def drop(self, column: str) -> None:
        if column not in self._columns:
            raise ValueError(f"Column [{column}] is not in interaction [{self}].")
        self._columns = [name for name in self._columns if name != column]

    def update(self, new_inter: Interaction) -> None:
        raise NotImplementedError("LazySequenceInteraction is read-only: materialize() the samples first")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("LazySequenceInteraction is read-only: materialize() the samples first")

    def __str__(self) -> str:
        return f"LazySequenceInteraction: {self.length} samples over {len(self.interactions)} interactions"

    __repr__ = __str__


class LazySequentialDataset(FastLoadingMixin, SequentialDataset):
    """RecBole's ``SequentialDataset`` whose prefix augmentation is a :class:`LazySequenceInteraction`.

    Same samples, same order (RecBole's sorts and splits run unchanged on the view), same fields and field
    properties; host memory O(interactions) instead of O(interactions x MAX_ITEM_LIST_LENGTH). Batches are built
    by ``dataset[index]``, which every RecBole data loader calls. Atomic files are read and k-core filtered with
    :class:`~recbole_elastic.loading.FastLoadingMixin` (same data, a fraction of RecBole's time and memory).
    """

    def data_augmentation(self) -> None:
        self.logger.debug("data_augmentation (lazy)")
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        self.sort(by=[self.uid_field, self.time_field], ascending=True)

        users = self.inter_feat[self.uid_field].numpy()
        rows = np.arange(len(users))
        first_of_user = np.ones(len(users), dtype=bool)
        first_of_user[1:] = users[1:] != users[:-1]
        user_start = np.maximum.accumulate(np.where(first_of_user, rows, 0))
        earlier = rows - user_start  # the user's interactions before each row
        target_rows = rows[earlier > 0]  # every interaction but a user's first is a target
        lengths = np.minimum(earlier[target_rows], max_len)  # RecBole keeps the last max_len of them

        # Every field but the user id gets a list: [N, ...] per sample for a field of [...] per interaction.
        fields = [field for field in self.inter_feat if field != self.uid_field]
        list_fields = {getattr(self, f"{field}_list_field"): field for field in fields}

        self.inter_feat = LazySequenceInteraction(
            self.inter_feat,
            torch.from_numpy(target_rows),
            torch.from_numpy(lengths.astype(np.int64)),
            max_len,
            list_fields,
            self.item_list_length_field,
        )

    def __getitem__(self, index, join=True):
        if not isinstance(self.inter_feat, LazySequenceInteraction):
            return super().__getitem__(index, join)
        df = self.inter_feat.materialize(index)
        return self.join(df) if join else df


def lazy_windows_apply(config) -> bool:
    """Whether ``config``'s run gets :class:`LazySequentialDataset`: a sequential model for which RecBole would
    build a plain ``SequentialDataset`` (no model-specific dataset class, no pre-split benchmark files, no saved
    dataset to load), unless ``lazy_sequence_windows`` is False."""
    if config["lazy_sequence_windows"] is False or config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return False
    if config["benchmark_filename"] or config["dataset_save_path"]:
        return False
    return not hasattr(importlib.import_module("recbole.data.dataset"), config["model"] + "Dataset")


def create_dataset(config, dataset_class: type = None):
    """RecBole's ``create_dataset``, with :class:`LazySequentialDataset` (or ``dataset_class``) where
    :func:`lazy_windows_apply`.

    With ``save_dataset``, the processed dataset (filtered and remapped, before augmentation and splitting) is
    saved to, and on later runs loaded from, :func:`~recbole_elastic.loading.dataset_cache_file`: a file keyed by
    the dataset settings and the data files, so changing either builds and saves a new one.
    """
    if not lazy_windows_apply(config):
        return recbole_create_dataset(config)
    dataset_class = dataset_class or LazySequentialDataset
    cache_file = dataset_cache_file(config, LazySequentialDataset.__name__) if config["save_dataset"] else None
    if cache_file and os.path.isfile(cache_file):
        with open(cache_file, "rb") as f:
            dataset = pickle.load(f)
        dataset.config = config  # the run's own settings; the dataset's match them (the file's key)
        getLogger().info(f"Loaded the processed dataset from {cache_file}")
        return dataset
    dataset = dataset_class(config)
    if cache_file:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        with atomic_path(cache_file) as temporary:
            with open(temporary, "wb") as f:
                pickle.dump(dataset, f, protocol=pickle.HIGHEST_PROTOCOL)
        getLogger().info(f"Saved the processed dataset to {cache_file}")
    return dataset


def default_window_stride(max_len: int) -> int:
    """The stride when ``train_window_stride`` is unset: three quarters of N = ``max_len``, rounded up. Every target
    then sees at least N / 4 items of context, for up to a third more windows than tiling (S = N; 6% more on ml-1m
    at N = 200). Chosen on ml-1m at N = 200, where it gave a mean training context of 0.84x the evaluation's
    against tiling's 0.74x and higher validation NDCG@10 after 4 epochs (docs/RESULTS.md, issue 25)."""
    return -(-3 * max_len // 4)


def window_stride(config) -> int:
    """``train_window_stride``, or :func:`default_window_stride` when unset."""
    stride = config["train_window_stride"]
    return default_window_stride(config["MAX_ITEM_LIST_LENGTH"]) if stride is None else stride


def check_window_settings(config) -> None:
    """Raise :class:`ConfigError` when ``train_all_positions`` cannot apply to ``config``'s run."""
    if config["lazy_sequence_windows"] not in (None, True, False):
        raise ConfigError(f"lazy_sequence_windows must be True or False, not {config['lazy_sequence_windows']!r}.")
    if not config["train_all_positions"]:
        return
    model = config["model"]
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or not hasattr(get_model(model), "forward_all_positions"):
        raise ConfigError(
            "train_all_positions needs a model that scores every position causally (ChunkedELASTIC, CausalELASTIC, "
            f"CausalSASRec, CausalLinRec); {model} reads one position per sample. Set train_all_positions=False for it."
        )
    eval_args = config["eval_args"] or {}
    order, group_by = eval_args.get("order"), eval_args.get("group_by")
    if order != "TO" or group_by != "user":
        # Windows are cut from each user's training samples, which must then be prefixes in time order.
        raise ConfigError(
            "train_all_positions cuts each user's training interactions, in time order, into windows: it needs "
            f"eval_args with order: TO and group_by: user (RecBole's defaults), not order: {order}, group_by: "
            f"{group_by}. Set them in eval_args, or train_all_positions=False."
        )
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    stride = window_stride(config)
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= max_len:
        raise ConfigError(
            f"train_window_stride = {config['train_window_stride']!r} is invalid: it must be an integer in "
            f"1..MAX_ITEM_LIST_LENGTH={max_len} (a larger stride would skip training targets), or ~ for "
            f"{default_window_stride(max_len)} (three quarters of it)."
        )
    if config["train_batch_counts"] not in (None, "targets", "slots"):  # None: a config saved before the key
        raise ConfigError(
            f"train_batch_counts = {config['train_batch_counts']!r} is invalid: use 'targets' (train_batch_size real "
            "targets per batch) or 'slots' (train_batch_size // MAX_ITEM_LIST_LENGTH windows per batch)."
        )
    negatives = config["train_neg_sample_args"] or {}
    if negatives.get("distribution", "none") != "none":
        if negatives.get("dynamic") or config["MODEL_INPUT_TYPE"] != InputType.PAIRWISE:
            raise ConfigError(
                "train_all_positions samples negatives per position for BPR (uniform or popularity); "
                f"train_neg_sample_args={negatives} is not supported with it."
            )


def window_end_samples(user_ids: np.ndarray, max_len: int, stride: int) -> Tuple[np.ndarray, np.ndarray]:
    """Which training samples end a window, as positions in ``user_ids`` (the split's samples, each user's in time
    order), and the first position of each window that has a loss.

    Each user's last sample ends a window, then every ``stride``-th one before it, down to the first window that
    reaches back to the user's first training target. That first window has a loss at every position; every later
    one only at its last ``stride`` positions, the targets the window before did not predict. So every training
    target is predicted exactly once, with at least ``max_len - stride`` items of context unless the user has fewer.
    """
    order = np.argsort(user_ids, kind="stable")  # each user's samples together, still in time order
    sorted_users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, counts)  # the sample's place among the user's targets
    from_last = np.repeat(counts, counts) - 1 - rank
    # A window ending at rank j covers ranks j - max_len + 1 .. j; the one ending at j + stride reached rank 0
    # already when j + stride < max_len.
    keep = (from_last % stride == 0) & ((from_last == 0) | (rank + stride >= max_len))
    # The window ending at rank j reaches rank 0 when j < max_len: the user's first window. Any later one is full
    # (max_len positions) and its first max_len - stride targets belong to the window before.
    loss_start = np.where(rank < max_len, 0, max_len - stride)
    by_position = np.argsort(order[keep], kind="stable")
    return order[keep][by_position], loss_start[keep][by_position]


BATCHES_PER_POOL = 64  # packed batches are cut from pools of windows this many batches hold, sorted by length


def cut_to_longest(windows: Interaction, length_field: str, list_suffix: str) -> Interaction:
    """``windows`` with every ``[B, N, ...]`` list (a field ending in ``list_suffix``) cut to the longest history
    (``length_field``): the positions after it are padding in every row, on which no causal model's output at a
    real position depends."""
    longest = int(windows[length_field].max())
    return Interaction(
        {
            field: value[:, :longest] if field.endswith(list_suffix) and value.dim() >= 2 else value
            for field, value in windows.interaction.items()
        }
    )


def pack_windows(targets: np.ndarray, n_batches: int, order: np.ndarray) -> List[np.ndarray]:
    """Cut windows, taken in ``order``, into ``n_batches`` consecutive batches of about equal real targets.

    ``targets[w]`` is window w's number of real targets. Laid end to end in ``order``, the windows cover
    ``total = targets.sum()`` targets; window w goes to batch ``floor(midpoint_w * n_batches / total)``. A batch
    thus holds ``total / n_batches`` targets give or take one window, and none is empty as long as no window holds
    more than ``total / n_batches`` targets (:func:`batches_per_epoch` sees to that).
    """
    ordered = targets[order]
    midpoints = np.cumsum(ordered) - ordered / 2
    batch_of = np.minimum((midpoints * n_batches / ordered.sum()).astype(np.int64), n_batches - 1)
    return np.split(order, np.searchsorted(batch_of, np.arange(1, n_batches)))


def sorted_in_pools(order: np.ndarray, lengths: np.ndarray, pool_size: int) -> np.ndarray:
    """``order`` cut into consecutive pools of ``pool_size`` windows, each pool sorted by window length (stably,
    so windows of one length keep their order): batches cut from it then hold windows of about one length, and
    cutting each to its longest window leaves little padding, while which windows share a pool stays random."""
    pools = [
        pool[np.argsort(lengths[pool], kind="stable")]
        for pool in np.split(order, range(pool_size, len(order), pool_size))
    ]
    return np.concatenate(pools)


def batches_per_epoch(targets: np.ndarray, budget: int) -> int:
    """How many batches of about ``budget`` real targets the windows (``targets`` each) fill: the total over the
    budget, rounded up, but never so many that a batch would get less than the largest window."""
    total = int(targets.sum())
    return max(1, min(-(-total // budget), total // int(targets.max())))


class AllPositionsTrainDataLoader(TrainDataLoader):
    """Training batches of user windows with the next item at every position (``train_all_positions``).

    A window is the prefix sample of one training target: its history ``x_{e-n} .. x_{e-1}`` (``n`` <= N =
    ``MAX_ITEM_LIST_LENGTH``) is the input sequence, and the next item at every position, ``x_{e-n+1} .. x_e``, the
    target sequence (``target_item_id_list``, 0 where there is no loss). Each user's last training target ends a
    window; earlier windows end every ``train_window_stride`` (S) targets before it, until one reaches back to the
    user's first item (:func:`window_end_samples`). The user's first window has a loss at every position, every
    later one at its last S positions only: every training target is predicted once per epoch, with at least
    N - S items of context (S = N tiles the history: the first targets of a window then see 1, 2, ... items). A
    history of T training targets gives about T / S windows, so an epoch costs O(T * N / S) positions for the
    model, against RecBole's T samples of N positions each.

    ``train_batch_size`` counts targets, as in RecBole's prefix scheme (one target per sample). With
    ``train_batch_counts: targets`` (the default) it counts real ones: each epoch the windows are shuffled and cut
    into :func:`batches_per_epoch` batches of ``train_batch_size`` real targets on average, at most one window more
    (:func:`pack_windows`), so every N gives the same targets per step and the same steps per epoch. Before the
    cut, windows are sorted by length within random pools of :data:`BATCHES_PER_POOL` batches
    (:func:`sorted_in_pools`): a batch then holds windows of about one length and little padding. With
    ``slots`` a batch holds ``train_batch_size // N`` windows (at least one), the scheme of every result before
    this key existed: short windows then fill fewer targets. Under DDP each rank's batches hold
    ``train_batch_size // world_size`` targets, as RecBole divides its batches. Each batch's ``[B, N]`` lists are
    cut to its longest window (padding after the last real position changes no causal output). For BPR, each
    position gets its own negative from RecBole's sampler (``neg_target_item_id_list``; ``sample_num`` negatives
    repeat the windows, as RecBole repeats samples). Works on RecBole's dense dataset and on
    :class:`LazySequentialDataset` alike.
    """

    def __init__(self, config, dataset, sampler, shuffle=False) -> None:
        # TrainDataLoader.__init__ sets sample_size to len(dataset); a window is a subset of the samples.
        self.logger = getLogger()
        self._set_neg_sample_args(config, dataset, config["MODEL_INPUT_TYPE"], config["train_neg_sample_args"])
        self.target_field, self.neg_target_field = target_sequence_fields(config)
        self.item_seq_field = config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
        self.list_suffix = config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        users = dataset.inter_feat[dataset.uid_field].numpy()
        ends, loss_start = window_end_samples(users, config["MAX_ITEM_LIST_LENGTH"], window_stride(config))
        self.window_samples = torch.from_numpy(ends)
        self.window_loss_start = torch.from_numpy(loss_start)
        lengths = dataset.inter_feat[self.length_field][self.window_samples].numpy()
        self.window_lengths = lengths  # positions per window
        self.window_targets = lengths - loss_start  # real targets per window
        self.packed = config["train_batch_counts"] != "slots"
        if self.packed:
            ranks = 1 if config["single_spec"] else config["world_size"]
            budget = max(config["train_batch_size"] // self.times // ranks, 1)  # times: BPR's repeated windows
            self.sample_size = batches_per_epoch(self.window_targets, budget)  # a "sample" is one packed batch
            self.packing_generator = torch.Generator().manual_seed(config["seed"])  # the same cut on every rank
        else:
            self.sample_size = len(self.window_samples)
        NegSampleDataLoader.__init__(self, config, dataset, sampler, shuffle=shuffle)

    def _init_batch_size_and_step(self) -> None:
        if self.packed:
            self.step = 1  # one packed batch per step; pack() decides its windows
            self.set_batch_size(1)
            return
        targets = self.config["train_batch_size"] // self.times
        windows = max(targets // self.config["MAX_ITEM_LIST_LENGTH"], 1)
        self.step = windows
        self.set_batch_size(windows * self.times)

    def pack(self, shuffle: bool) -> List[np.ndarray]:
        """This epoch's batches, as window indices: the windows in a fresh random order (or in order without
        ``shuffle``), sorted by length within pools of about :data:`BATCHES_PER_POOL` batches, cut into
        ``sample_size`` batches of equal real targets, give or take one window. The loader then draws the batches
        in random order."""
        n_windows = len(self.window_targets)
        order = torch.randperm(n_windows, generator=self.packing_generator).numpy() if shuffle else np.arange(n_windows)
        n_pools = -(-self.sample_size // BATCHES_PER_POOL)
        pool_size = -(-n_windows // n_pools)
        order = sorted_in_pools(order, self.window_lengths, pool_size)
        return pack_windows(self.window_targets, self.sample_size, order)

    def __iter__(self):
        if self.packed:
            self.window_batches = self.pack(self.shuffle)
        return super().__iter__()

    def collate_fn(self, index):
        index = np.concatenate([self.window_batches[i] for i in index]) if self.packed else np.array(index)
        windows = self._dataset[self.window_samples[index].numpy()]
        targets = self.next_items(windows, self.window_loss_start[index])
        windows.update(Interaction({self.target_field: targets}))
        windows = cut_to_longest(windows, self.length_field, self.list_suffix)
        return self._neg_sampling(self.transform(self._dataset, windows))

    def next_items(self, windows: Interaction, loss_start: torch.Tensor) -> torch.Tensor:
        """``[B, N]``: the item after each position of each window's history (the sample's target after the last),
        0 (no loss) at padding and before each window's ``loss_start``: those targets belong to an earlier window."""
        item_seq = windows[self.item_seq_field]
        lengths = windows[self.length_field]
        targets = torch.zeros_like(item_seq)
        targets[:, :-1] = item_seq[:, 1:]  # 0 from the last real position on
        targets[torch.arange(len(lengths)), lengths - 1] = windows[self.iid_field]
        positions = torch.arange(item_seq.size(1))
        return targets.masked_fill(positions.unsqueeze(0) < loss_start.unsqueeze(1), 0)

    def _neg_sampling(self, windows: Interaction) -> Interaction:
        if self.neg_sample_args["distribution"] == "none" or self.neg_sample_args["sample_num"] == "none":
            return windows
        targets = windows[self.target_field]  # [B N]
        real = targets != 0
        users = windows[self.uid_field].unsqueeze(1).expand_as(targets)[real]
        sampled = self._sampler.sample_by_user_ids(users.numpy(), targets[real].numpy(), self.neg_sample_num)
        negatives = torch.zeros((self.neg_sample_num,) + targets.shape, dtype=torch.long)
        negatives[:, real] = sampled.view(self.neg_sample_num, -1)  # RecBole's layout: all first samples, ...
        windows = windows.repeat(self.neg_sample_num)  # row j * B + b is window b, with its j-th negatives
        windows.update(Interaction({self.neg_target_field: negatives.view(-1, targets.size(1))}))
        return windows


def all_positions_train_data(config, train_data):
    """``train_data`` as windows (:class:`AllPositionsTrainDataLoader`) when ``train_all_positions``, else itself."""
    if not config["train_all_positions"]:
        return train_data
    return AllPositionsTrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=config["shuffle"])
