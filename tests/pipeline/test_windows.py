"""Lazy prefix samples (exactly RecBole's augmentation) and all-position training windows."""

import os
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole.data import data_preparation
from recbole.data.dataset import SequentialDataset

from recbole_elastic.config import build_config
from recbole_elastic.data import prepare_data
from recbole_elastic.errors import ConfigError
from recbole_elastic.loading import dataset_cache_file
from recbole_elastic.quick_start import run
from recbole_elastic.windows import (
    AllPositionsTrainDataLoader,
    LazySequenceInteraction,
    LazySequentialDataset,
    batches_per_epoch,
    create_dataset,
    pack_windows,
    sorted_in_pools,
    window_end_samples,
)

from tests.helpers import tiny_run_config, write_inter


def assert_same_samples(lazy_feat, dense_feat):
    """Same samples in the same order: every field RecBole builds, with its dtype, shape and values."""
    assert isinstance(lazy_feat, LazySequenceInteraction)
    assert len(lazy_feat) == len(dense_feat)
    assert lazy_feat.columns == dense_feat.columns
    materialized = lazy_feat.materialize(slice(None))
    for field in dense_feat.columns:
        expected, actual = dense_feat[field], materialized[field]
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, field
        assert torch.equal(actual, expected), field


def build_both(config):
    """RecBole's dataset and the lazy one for ``config``, each built (augmented and split) by RecBole's build."""
    datasets = []
    for dataset_class in (SequentialDataset, LazySequentialDataset):
        dataset = dataset_class(config)
        datasets.append((dataset, dataset.build()))
    return datasets


def assert_same_datasets(config):
    (dense, dense_splits), (lazy, lazy_splits) = build_both(config)
    for attribute in ("field2type", "field2source", "field2seqlen"):
        assert getattr(lazy, attribute) == getattr(dense, attribute), attribute
    assert lazy.field2id_token.keys() == dense.field2id_token.keys()
    for field, tokens in dense.field2id_token.items():  # the same ids for the same tokens
        assert np.array_equal(lazy.field2id_token[field], tokens), field
    assert_same_samples(lazy.inter_feat, dense.inter_feat)
    for lazy_split, dense_split in zip(lazy_splits, dense_splits):
        assert_same_samples(lazy_split.inter_feat, dense_split.inter_feat)
        index = np.random.default_rng(0).permutation(len(dense_split))[:37]  # a data loader's batch
        batch, expected = lazy_split[index], dense_split[index]
        assert all(torch.equal(batch[field], expected[field]) for field in expected.columns)
    return lazy


def test_lazy_samples_are_recbole_augmentation_on_ml_100k(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # RecBole finds ml-100k in its wheel (dataset_example) by name; rating is a float field, timestamp too.
    config = build_config("ELASTIC", "ml-100k", config_dict={"MAX_ITEM_LIST_LENGTH": 50, "gpu_id": ""})
    lazy = assert_same_datasets(config)
    assert len(lazy.inter_feat.interactions) == 100_000  # each interaction stored once
    assert all(tensor.dim() == 1 for tensor in lazy.inter_feat.interactions.interaction.values())


def write_extra_fields_dataset(data_path, name="extra", n_users=30, seed=0):
    """user, item, a float (rating), a token (category) and a token_seq (tags) field; ties in time; users with
    2 to 25 interactions (shorter and longer than MAX_ITEM_LIST_LENGTH)."""
    rng = random.Random(seed)
    lines = ["user_id:token\titem_id:token\trating:float\tcategory:token\ttags:token_seq\ttimestamp:float"]
    for user in range(1, n_users + 1):
        for step in range(rng.choice([2, 3, 5, 9, 25])):
            tags = " ".join(f"t{rng.randint(1, 6)}" for _ in range(rng.randint(1, 3)))
            time = 1_000 + user * 100 + step // 2  # pairs of equal timestamps
            lines.append(f"{user}\t{rng.randint(1, 40)}\t{rng.randint(1, 5)}.5\tc{rng.randint(1, 4)}\t{tags}\t{time}")
    write_inter(data_path, name, "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "split, numerical, unused",
    [
        ({"LS": "valid_and_test"}, False, None),
        ({"LS": "valid_and_test"}, True, {"inter": ["category"]}),  # rating embedded as a numerical feature
        ({"RS": [0.8, 0.1, 0.1]}, False, None),
    ],
)
def test_lazy_samples_are_recbole_augmentation_with_extra_fields(tmp_path, monkeypatch, split, numerical, unused):
    monkeypatch.chdir(tmp_path)
    data_path = str(tmp_path / "data")
    write_extra_fields_dataset(data_path)
    config_dict = {
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "rating", "category", "tags", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 7,
        "eval_args": {"split": split, "order": "TO", "group_by": "user", "mode": "full"},
        "numerical_features": ["rating"] if numerical else [],
        "unused_col": unused,  # dropped when the dataset is split (category; category_list stays, as in RecBole)
        "gpu_id": "",
    }
    lazy = assert_same_datasets(build_config("ELASTIC", "extra", config_dict=config_dict))
    assert {"rating_list", "category_list", "tags_list", "timestamp_list"} <= set(lazy.inter_feat.columns)
    assert ("category" in lazy.inter_feat) == (unused is None)


@pytest.mark.parametrize("model", ["ELASTIC", "GRU4Rec"])
def test_lazy_windows_give_the_same_metrics(tiny_data, model):
    results = [
        run(model, "tiny", config_dict=tiny_run_config(tiny_data, lazy_sequence_windows=lazy), saved=False)
        for lazy in (True, False)
    ]
    assert results[0]["test_result"] == results[1]["test_result"]
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"]


def test_run_path_builds_the_lazy_dataset_unless_switched_off(tiny_data):
    for lazy, dataset_class in ((None, LazySequentialDataset), (False, SequentialDataset)):
        settings = tiny_run_config(tiny_data)
        if lazy is not None:
            settings["lazy_sequence_windows"] = lazy
        dataset = prepare_data(build_config("ELASTIC", "tiny", config_dict=settings))[0]
        assert type(dataset) is dataset_class


# ----- all-position training windows -----


def test_window_ends_tile_each_users_targets():
    users = np.array([5] * 10 + [2] * 3 + [7])  # each user's training samples, in time order
    ends, loss_start = window_end_samples(users, max_len=4, stride=4)
    # user 5 (targets 0..9): windows end at 9, 5, 1; user 2: at 2; user 7: at its only target
    assert ends.tolist() == [1, 5, 9, 12, 13]
    assert loss_start.tolist() == [0, 0, 0, 0, 0]
    ends, loss_start = window_end_samples(users, max_len=4, stride=2)
    assert ends.tolist() == [3, 5, 7, 9, 12, 13]  # ends 9, 7, 5, 3 (3 reaches back to target 0)
    # the window ending at 3 is user 5's first (all its targets); the later ones predict their last 2 targets
    assert loss_start.tolist() == [0, 2, 2, 2, 0, 0]


@settings(max_examples=200, deadline=None)
@given(
    targets=st.lists(st.integers(1, 50), min_size=1, max_size=300),
    budget=st.integers(1, 400),
    seed=st.integers(0, 2**16),
)
def test_packed_batches_hold_every_window_once_and_equal_targets(targets, budget, seed):
    targets = np.array(targets)
    order = np.random.default_rng(seed).permutation(len(targets))
    n_batches = batches_per_epoch(targets, budget)
    batches = pack_windows(targets, n_batches, order)
    assert len(batches) == n_batches and all(len(batch) > 0 for batch in batches)
    assert np.array_equal(np.concatenate(batches), order)  # every window once, in the shuffled order
    total = targets.sum()
    needed = -(-total // budget)  # as many batches as the budget needs, rounded up ...
    fit = max(1, total // targets.max())  # ... unless a batch would then average less than the largest window
    assert n_batches == min(needed, fit)
    if budget >= targets.max():
        assert n_batches >= needed - 1
    average = total / n_batches
    sums = [targets[batch].sum() for batch in batches]
    assert all(abs(count - average) <= targets.max() for count in sums), (sums, average)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=100),
    pool_size=st.integers(1, 30),
    seed=st.integers(0, 99),
)
def test_windows_are_sorted_by_length_within_each_pool(lengths, pool_size, seed):
    lengths = np.array(lengths)
    order = np.random.default_rng(seed).permutation(len(lengths))
    pooled = sorted_in_pools(order, lengths, pool_size)
    for start in range(0, len(order), pool_size):
        pool, expected = pooled[start : start + pool_size], order[start : start + pool_size]
        assert sorted(pool) == sorted(expected)  # the same windows share a pool
        assert np.all(np.diff(lengths[pool]) >= 0)  # shortest first
        for length in set(lengths[pool].tolist()):  # windows of one length keep their random order
            assert [w for w in pool if lengths[w] == length] == [w for w in expected if lengths[w] == length]


def test_packed_batches_give_the_same_steps_at_every_window_length(tiny_data):
    # The same targets per epoch at N = 5 and N = 10 (tiling): the same batches per epoch, the same targets each.
    epochs = {}
    for max_len in (5, 10):
        config = build_config(
            "CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data, MAX_ITEM_LIST_LENGTH=max_len)
        )
        _, train_data, batches = windows_of_one_epoch(config)
        epochs[max_len] = [int((batch["target_item_id_list"] != 0).sum()) for batch in batches]
        assert len(train_data) == len(batches)  # what a learning-rate schedule counts
        assert len(batches) < 64  # one pool: every batch is a run of windows sorted by length
        assert all(batch["item_length"].diff().ge(0).all() for batch in batches)
        second = list(train_data)
        assert sum(int((batch["target_item_id_list"] != 0).sum()) for batch in second) == sum(epochs[max_len])
        assert window_sets(second) != window_sets(batches)  # a new cut each epoch, not only a new batch order
    assert len(epochs[5]) == len(epochs[10]) and sum(epochs[5]) == sum(epochs[10])


def window_sets(batches):
    """Which windows (user, last target time) share a batch, whatever the order of the batches."""
    return {frozenset(zip(batch["user_id"].tolist(), batch["timestamp"].tolist())) for batch in batches}


def windows_of_one_epoch(config):
    dataset, train_data, valid_data, test_data = prepare_data(config)
    assert isinstance(train_data, AllPositionsTrainDataLoader)
    batches = list(train_data)
    return dataset, train_data, batches


@pytest.mark.parametrize(
    "loss_type, stride, counts",
    [
        ("CE", None, "targets"),
        ("BPR", 10, "targets"),  # tiling
        ("CE", 3, "targets"),
        ("BPR", 7, "slots"),
        ("CE", None, "slots"),
    ],
)
def test_windows_cover_every_training_target_once(tiny_data, loss_type, stride, counts):
    settings = dict(loss_type=loss_type, train_window_stride=stride, train_batch_counts=counts)
    config = build_config("CausalELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, **settings))
    assert config["train_all_positions"] is True and config["train_batch_size"] == 64
    dataset, train_data, batches = windows_of_one_epoch(config)
    real_targets = [int((batch["target_item_id_list"] != 0).sum()) for batch in batches]
    if counts == "slots":  # 64 // N = 6 windows of up to N = 10 targets
        assert max(len(batch) for batch in batches) == 6
    else:  # as few batches as hold 64 real targets each on average; each the average give or take N = 10
        assert len(batches) == -(-sum(real_targets) // 64)
        average = sum(real_targets) / len(batches)
        assert all(abs(count - average) <= 10 for count in real_targets), real_targets
    prefix_train = train_data._dataset  # RecBole's training split: one sample per training target
    expected = sorted(zip(prefix_train.inter_feat["user_id"].tolist(), prefix_train.inter_feat["timestamp"].tolist()))
    # every training interaction (a user's first too, which is no target): the only items a history may hold
    training_times = set(expected) | {
        (user, times[0]) for user, times in zip(batch_users(prefix_train), batch_times(prefix_train))
    }
    stride = stride or 8  # unset: three quarters of N = 10, rounded up
    min_context = 10 - stride + 1  # items a target sees unless its user has fewer before it
    seen, later_windows = [], 0
    for batch in batches:
        items, targets, lengths = batch["item_id_list"], batch["target_item_id_list"], batch["item_length"]
        times = batch["timestamp_list"]
        assert items.shape == targets.shape == (len(lengths), int(lengths.max()))  # cut to the longest window
        for row, length in enumerate(lengths.tolist()):
            user = int(batch["user_id"][row])
            next_items = torch.cat([items[row, 1:length], batch["item_id"][row].view(1)])
            next_times = times[row, 1:length].tolist() + [float(batch["timestamp"][row])]
            predicted = targets[row, :length] != 0
            assert torch.equal(targets[row, :length][predicted], next_items[predicted])  # the next item or 0
            assert (targets[row, length:] == 0).all()
            assert predicted[-1] and predicted.int().diff().ge(0).all()  # a loss on the window's last positions
            if not predicted.all():  # not the user's first window: the targets before were predicted already
                assert length == 10 and int(predicted.sum()) == stride
                later_windows += 1
            first_context = int(predicted.int().argmax()) + 1  # items the first predicted target sees
            assert predicted.all() or first_context >= min_context  # a first window starts at the first item
            seen += [(user, t) for t, p in zip(next_times, predicted.tolist()) if p]
            assert {(user, t) for t in times[row, :length].tolist()} <= training_times  # no valid/test history
        if loss_type == "BPR":
            negatives = batch["neg_target_item_id_list"]
            real = targets != 0
            assert negatives.shape == targets.shape and (negatives[~real] == 0).all()
            assert (negatives[real] > 0).all() and (negatives[real] != targets[real]).all()
        else:
            assert "neg_target_item_id_list" not in batch
    assert sorted(seen) == expected  # every training target exactly once
    assert (later_windows > 0) == (stride < 10)  # overlapping windows exactly when the stride is below N


def batch_users(dataset):
    return dataset.inter_feat["user_id"].tolist()


def batch_times(dataset):
    return dataset.inter_feat["timestamp_list"].tolist()


def test_valid_and_test_stay_recbole_samples(tiny_data):
    config = build_config("CausalELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    _, train_data, valid_data, test_data = prepare_data(config)
    reference = build_config("CausalELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, train_all_positions=False))
    reference_dataset = SequentialDataset(reference)
    _, reference_valid, reference_test = data_preparation(reference, reference_dataset)
    for ours, theirs in ((valid_data, reference_valid), (test_data, reference_test)):
        assert_same_samples(ours._dataset.inter_feat, theirs._dataset.inter_feat)


def test_all_positions_run_trains_every_causal_model(tiny_data):
    for model in ("CausalELASTIC", "CausalSASRec", "CausalLinRec"):
        result = run(model, "tiny", config_dict=tiny_run_config(tiny_data, train_window_stride=3), saved=False)
        assert np.isfinite(result["best_valid_score"]) and result["epochs"] == 1


@pytest.mark.parametrize(
    "model, settings, fragment",
    [
        ("ELASTIC", {"train_all_positions": True}, "scores every position causally"),
        ("CausalELASTIC", {"train_window_stride": 0}, "train_window_stride"),
        ("CausalELASTIC", {"train_window_stride": 11}, "1..MAX_ITEM_LIST_LENGTH=10"),
        ("CausalSASRec", {"train_batch_counts": "windows"}, "train_batch_counts = 'windows' is invalid"),
        # random order, or samples not grouped by user: a user's training samples are no prefixes in time order
        (
            "CausalELASTIC",
            {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}},
            "needs eval_args with order: TO and group_by: user",
        ),
        (
            "CausalSASRec",
            {"eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "TO", "group_by": "none", "mode": "full"}},
            "needs eval_args with order: TO and group_by: user",
        ),
    ],
)
def test_bad_window_settings_name_the_key(tiny_data, model, settings, fragment):
    config = build_config(model, "tiny", config_dict=tiny_run_config(tiny_data, **settings))
    with pytest.raises(ConfigError) as error:
        prepare_data(config)
    assert fragment in str(error.value)
    assert not os.path.isdir(os.path.join(tiny_data, "saved"))


def test_a_config_saved_before_train_batch_counts_packs_its_batches(tiny_data):
    # Checkpoints written before the key existed hold None for it: they load, and train as the default does.
    config = build_config("CausalSASRec", "tiny", config_dict=tiny_run_config(tiny_data, train_batch_counts=None))
    assert config["train_batch_counts"] is None
    _, train_data, _ = windows_of_one_epoch(config)
    assert train_data.packed


@pytest.mark.parametrize(
    "filtering",
    [
        # iterative k-core: items fall below 25 once users below 20 are gone, and so on
        {"user_inter_num_interval": "[20,inf)", "item_inter_num_interval": "[25,inf)"},
        # upper bounds, and a rating filter first
        {
            "user_inter_num_interval": "[5,300]",
            "item_inter_num_interval": "(3,200)",
            "val_interval": {"rating": "[3,inf)"},
        },
    ],
)
def test_fast_loading_and_k_core_give_recbole_dataset(tmp_path, monkeypatch, filtering):
    monkeypatch.chdir(tmp_path)
    config_dict = {"MAX_ITEM_LIST_LENGTH": 20, "gpu_id": "", **filtering}
    config = build_config("ELASTIC", "ml-100k", config_dict=config_dict)
    lazy = assert_same_datasets(config)
    assert 20_000 < len(lazy.inter_feat.interactions) < 95_000  # the filters removed something, not everything


def test_save_dataset_caches_the_processed_dataset_keyed_by_its_settings(tiny_data):
    def dataset_for(**settings):
        config = build_config("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, save_dataset=True, **settings))
        return config, create_dataset(config)

    config, first = dataset_for()
    cache_file = dataset_cache_file(config, "LazySequentialDataset")
    written = os.stat(cache_file).st_mtime_ns
    _, cached = dataset_for()
    assert os.stat(cache_file).st_mtime_ns == written  # loaded, not rebuilt
    assert cached.inter_feat.equals(first.inter_feat) and cached.field2id_token.keys() == first.field2id_token.keys()
    # the run's own split settings apply to a cached dataset (they are not part of the processed data)
    split = {"split": {"RS": [0.8, 0.1, 0.1]}, "order": "RO", "group_by": "user", "mode": "full"}
    config, cached = dataset_for(eval_args=split)
    assert cached.config["eval_args"]["split"] == {"RS": [0.8, 0.1, 0.1]}

    config, filtered = dataset_for(user_inter_num_interval="[10,inf)")  # a filtering change: another file
    assert dataset_cache_file(config, "LazySequentialDataset") != cache_file
    assert os.path.isfile(dataset_cache_file(config, "LazySequentialDataset"))
    assert filtered.inter_num < first.inter_num

    inter_file = os.path.join(tiny_data, "tiny", "tiny.inter")  # a changed data file: another file
    with open(inter_file, "a", encoding="utf-8") as f:
        f.write("999\t1\t5000000\n")
    config, _ = dataset_for()
    assert dataset_cache_file(config, "LazySequentialDataset") != cache_file
