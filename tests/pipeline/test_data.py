"""Dataset files: a malformed or missing file gets one message naming it; amazon-books' plugin settings apply."""

import os
import random

import pytest

from recbole.data import create_dataset

from recbole_elastic.config import build_config
from recbole_elastic.convert import convert_sequences
from recbole_elastic.convert import main as convert_main
from recbole_elastic.errors import DatasetFormatError
from recbole_elastic.quick_start import run

from tests.helpers import (
    assert_metrics_match_the_checkpoint,
    cli_args,
    no_checkpoints,
    run_cli_expecting_error,
    tiny_run_config,
    write_inter,
)


def test_missing_column(tiny_data, capsys):
    write_inter(tiny_data, "nocol", "user_id:token\titem_id:token\n1\t2\n1\t3\n")
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "nocol"))
    assert "nocol.inter" in err and "['timestamp']" in err and "load_col" in err
    assert no_checkpoints(tiny_data)


def test_non_numeric_timestamp_names_the_file_line_and_column(tiny_data, capsys):
    rows = "".join(f"{u}\t{i}\t{u * 10 + i}\n" for u in range(1, 5) for i in range(1, 6))
    write_inter(tiny_data, "badtime", "user_id:token\titem_id:token\ttimestamp:float\n" + rows + "5\t1\tyesterday\n")
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "badtime"))
    path = os.path.join(tiny_data, "badtime", "badtime.inter")
    assert f"{path}, line 22, column 'timestamp:float': 'yesterday' is not a number" in err
    assert no_checkpoints(tiny_data)


def test_one_line_per_user_text_converts_to_atomic_files(tmp_path):
    txt = tmp_path / "Shop.txt"
    txt.write_text("u1 i3 i1 i2\n\nu2 i2 i9\n")
    assert convert_main([str(txt), "--dataset=Shop", f"--output_dir={tmp_path / 'data'}"]) == 0
    inter = (tmp_path / "data" / "Shop" / "Shop.inter").read_text().splitlines()
    assert inter == [
        "user_id:token\titem_id:token\ttimestamp:float",
        "u1\ti3\t0",
        "u1\ti1\t1",
        "u1\ti2\t2",
        "u2\ti2\t0",
        "u2\ti9\t1",
    ]
    txt.write_text("u1 i3\nu2\n")
    with pytest.raises(DatasetFormatError, match="line 2: 'u2' has a user but no items"):
        convert_sequences(str(txt), "Shop", str(tmp_path / "data"))


def test_failed_download_removes_every_folder_it_created_and_shows_the_needed_header(tmp_path, capsys, monkeypatch):
    import recbole.utils.url

    def offline(url, folder):
        raise OSError("network unreachable")

    monkeypatch.setattr(recbole.utils.url, "download_url", offline)
    monkeypatch.chdir(tmp_path)
    err = run_cli_expecting_error(capsys, ["--dataset=amazon-books", f"--data_path={tmp_path / 'dataset'}"])
    assert "downloading it from" in err and "network unreachable" in err
    assert "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float" in err  # amazon-books needs rating
    assert not (tmp_path / "dataset").exists()  # nor the folder above the dataset's


def test_wrong_separator(tiny_data, capsys):
    rows = "".join(f"{u},{i},{u * 10 + i}\n" for u in range(1, 5) for i in range(1, 6))
    write_inter(tiny_data, "commas", "user_id:token,item_id:token,timestamp:float\n" + rows)
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, "commas"))
    assert "commas.inter" in err and "single column" in err and "separated by ','" in err
    assert "field_separator" in err


def test_dataset_left_empty_by_filtering(tiny_data, capsys):
    err = run_cli_expecting_error(capsys, cli_args(tiny_data, user_inter_num_interval="[1000,inf)"))
    assert "Filtering left 0 interactions" in err and "user_inter_num_interval" in err
    assert no_checkpoints(tiny_data)


def write_amazon_books(data_path, n_users=40, n_items=30, seed=0):
    """A small file with amazon-books' schema: user_id, item_id, rating, timestamp."""
    rng = random.Random(seed)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user in range(n_users):
        for step in range(20):
            rating = rng.choice([1, 2, 3, 4, 5, 5])
            lines.append(
                f"A{user:04d}\tB{rng.randrange(n_items):05d}\t{rating}.0\t{1_300_000_000 + user * 1000 + step}"
            )
    write_inter(data_path, "amazon-books", "\n".join(lines) + "\n")
    return len(lines) - 1


def test_amazon_books_configuration_on_a_synthetic_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_path = str(tmp_path / "data")
    total = write_amazon_books(data_path)
    config_dict = {key: value for key, value in tiny_run_config(data_path).items() if key not in ("load_col",)}
    config_dict["MAX_ITEM_LIST_LENGTH"] = 50
    config = build_config("ELASTIC", "amazon-books", config_dict=config_dict)
    assert config["load_col"] == {"inter": ["user_id", "item_id", "rating", "timestamp"]}
    assert config["val_interval"] == {"rating": "[3,inf)"}
    assert config["user_inter_num_interval"] == "[10,inf)"
    result = run("ELASTIC", "amazon-books", config_dict=config_dict)
    assert_metrics_match_the_checkpoint(result["test_result"], result["model_file"])

    kept = create_dataset(config).inter_num
    assert 0 < kept < total  # ratings below 3 were filtered out


def test_amazon_books_offline_without_files_gets_the_clear_message(tmp_path, capsys, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    err = run_cli_expecting_error(capsys, ["--dataset=amazon-books", f"--data_path={tmp_path}"])
    url = "https://recbole.s3-accelerate.amazonaws.com/ProcessedDatasets/Amazon_ratings/Amazon_Books.zip"
    assert no_network == [url]  # RecBole's archive of the 2014 ratings was asked for, once
    expected = tmp_path / "amazon-books" / "amazon-books.inter"
    assert f"Dataset 'amazon-books' not found: looked for {expected}, and downloading it from {url} failed" in err
    assert "Network is unreachable" in err and "--data_path=" in err
    assert not (tmp_path / "amazon-books").exists()
