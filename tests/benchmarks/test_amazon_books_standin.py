"""The amazon-books stand-in: seeded, the requested shape, and filtered by the plugin exactly as ``--check`` counts."""

import numpy as np

from recbole_elastic.config import build_config
from recbole_elastic.windows import create_dataset

from tests.benchmarks.test_benchmarks import load_benchmark


def test_standin_is_seeded_and_has_the_requested_shape():
    standin = load_benchmark("amazon_books_standin")
    first, again = standin.generate(seed=1, scale=0.001), standin.generate(seed=1, scale=0.001)
    assert all(np.array_equal(first[name], again[name]) for name in first)
    rows, users, items = (round(n * 0.001) for n in (standin.ROWS, standin.USERS, standin.ITEMS))
    assert len(first["user"]) == rows
    assert np.array_equal(np.unique(first["user"]), np.arange(users))  # every user and item rated at least once
    assert np.array_equal(np.unique(first["item"]), np.arange(items))
    assert set(np.unique(first["rating"]).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    heaviest = np.bincount(first["user"]).max()
    assert heaviest > 20 * len(first["user"]) / users  # a heavy tail: the top user far above the mean


def test_plugin_filters_the_standin_to_the_counts_check_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    standin = load_benchmark("amazon_books_standin")
    columns = standin.generate(seed=3, scale=0.004)
    standin.write_inter(columns, str(tmp_path / "amazon-books"))
    config = build_config("ELASTIC", "amazon-books", config_dict={"data_path": str(tmp_path), "gpu_id": ""})
    dataset = create_dataset(config)  # the plugin's amazon-books settings: ratings >= 3, 10-core
    users, items, interactions = standin.filtered_counts(columns)
    assert interactions > 1000
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (users, items, interactions)
