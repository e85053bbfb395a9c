"""Top-k recommendations from a checkpoint: equal to the model's own scores on each user's whole history, computed
here independently from the raw .inter file; history exclusion, users files, new histories, and bad input."""

import csv
import glob
import logging
import os
import random
from typing import Dict, List, Optional

import numpy as np
import pandas as pd
import pytest
import torch

from recbole.data.interaction import Interaction

from recbole_elastic import recommend, recommend_for_histories
from recbole_elastic.cli import main, parse_args
from recbole_elastic.errors import ConfigError
from recbole_elastic.quick_start import load_data_and_model, run
from recbole_elastic.recommendations import write_recommendations

from tests.helpers import run_cli_expecting_error, tiny_run_config

MAX_LEN = 10
LONER = "user-loner"  # one interaction: in the dataset, but no sequence


def write_token_dataset(root: str, name: str = "tokens", n_users: int = 30, n_items: int = 40, seed: int = 3) -> str:
    """``root/name/name.inter`` with word tokens (internal ids differ from them), lines shuffled, several users
    longer than MAX_LEN, repeated items, and one user with a single interaction."""
    rng = random.Random(seed)
    rows = []
    for user in range(n_users):
        for step in range(rng.randint(5, 16)):
            rows.append((f"user-{user:02d}", f"item-{rng.randint(1, n_items)}", 1_000_000 + 37 * user + step))
    rows.append((LONER, "item-1", 5))
    rng.shuffle(rows)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.inter"), "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        f.writelines(f"{user}\t{item}\t{time}\n" for user, item, time in rows)
    return root


def raw_histories(data_path: str, name: str = "tokens") -> Dict[str, List[str]]:
    """Each user's item tokens in time order, read from the .inter file (not through RecBole)."""
    events: Dict[str, list] = {}
    with open(os.path.join(data_path, name, f"{name}.inter"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            events.setdefault(row["user_id:token"], []).append((float(row["timestamp:float"]), row["item_id:token"]))
    return {user: [item for _, item in sorted(items)] for user, items in events.items()}


class Expected:
    """The top-k computed independently: the checkpoint's model scores the last MAX_LEN items of a raw history
    (``full_sort_predict`` on a batch built here); the padding item and, unless kept, the history's items are
    dropped; the rest sorted by score."""

    def __init__(self, checkpoint: str) -> None:
        _, self.model, self.dataset, _, _, _ = load_data_and_model(checkpoint)
        self.model.eval()

    @torch.no_grad()
    def top(self, history: List[str], k: int, keep_seen: bool = False, user: Optional[str] = None):
        item_ids = self.dataset.field2token_id["item_id"]
        ids = [item_ids[item] for item in history if item in item_ids]
        latest = ids[-MAX_LEN:]
        item_seq = torch.zeros(1, MAX_LEN, dtype=torch.long)
        item_seq[0, : len(latest)] = torch.tensor(latest)
        uid = self.dataset.field2token_id["user_id"][user] if user else 0
        batch = Interaction(
            {"user_id": torch.tensor([uid]), "item_id_list": item_seq, "item_length": torch.tensor([len(latest)])}
        )
        scores = self.model.full_sort_predict(batch).view(-1).numpy()
        excluded = {0} | (set() if keep_seen else set(ids))
        ranked = [item for item in np.argsort(-scores, kind="stable") if item not in excluded][:k]
        tokens = [str(token) for token in self.dataset.field2id_token["item_id"][ranked]]
        return tokens, scores[ranked]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Dict[str, str]:
    """One-epoch checkpoints on the token dataset: RecBole built-in sequential models (SASRec on the plugin's
    lazy dataset and on RecBole's dense one, GRU4Rec), a plugin model and a general (non-sequential) one; the
    data path under "data"."""
    root = tmp_path_factory.mktemp("recommend")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # RecBole's log folders
        data = write_token_dataset(str(root / "data"))
        config = tiny_run_config(data, MAX_ITEM_LIST_LENGTH=MAX_LEN)
        sequential = ("SASRec", "GRU4Rec", "ELASTIC")
        checkpoints = {model: run(model, "tokens", config_dict=config)["model_file"] for model in sequential}
        dense = {**config, "lazy_sequence_windows": False}  # RecBole's own SequentialDataset
        checkpoints["SASRec-dense"] = run("SASRec", "tokens", config_dict=dense)["model_file"]
        checkpoints["BPR"] = run("BPR", "tokens", config_dict={**config, "embedding_size": 8})["model_file"]
    return {**checkpoints, "data": data}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # RecBole's log folders, and the tests' output files


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "ELASTIC", "SASRec-dense"])
def test_top_k_is_the_models_ranking_after_the_whole_history(trained, model):
    frame = recommend(trained[model], topk=5)
    assert list(frame.columns) == ["user", "rank", "item", "score"]
    histories = raw_histories(trained["data"])
    assert set(frame["user"]) == set(histories) - {LONER}
    expected = Expected(trained[model])
    dataset_class = "SequentialDataset" if model.endswith("-dense") else "LazySequentialDataset"
    assert type(expected.dataset).__name__ == dataset_class
    for user, rows in frame.groupby("user"):
        items, scores = expected.top(histories[user], 5, user=user)
        assert list(rows["rank"]) == [1, 2, 3, 4, 5]
        assert list(rows["item"]) == items, user
        np.testing.assert_allclose(rows["score"].to_numpy(), scores, rtol=1e-5, atol=1e-6)
        assert not set(rows["item"]) & set(histories[user])


def test_keep_seen_ranks_history_items_too(trained):
    histories = raw_histories(trained["data"])
    frame = recommend(trained["SASRec"], topk=15, keep_seen=True)
    expected = Expected(trained["SASRec"])
    seen_recommended = 0
    for user, rows in frame.groupby("user"):
        items, _ = expected.top(histories[user], 15, keep_seen=True, user=user)
        assert list(rows["item"]) == items, user
        seen_recommended += len(set(items) & set(histories[user]))
    assert seen_recommended > 0  # otherwise keeping them would change nothing here
    assert "[PAD]" not in set(frame["item"])


def test_users_file_on_the_command_line_writes_external_tokens(trained, capsys):
    with open("users.txt", "w", encoding="utf-8") as f:
        f.write("user-07\n\nuser-03\nuser-07\n")
    args = ["--recommend", f"--checkpoint={trained['ELASTIC']}", "--topk=3", "--users=users.txt"]
    assert main([*args, "--output=recs.tsv"]) == 0
    assert "top-3 items for 2 users written to recs.tsv (6 rows)" in capsys.readouterr().out
    with open("recs.tsv", encoding="utf-8") as f:
        assert f.readline() == "user\trank\titem\tscore\n"
    written = pd.read_csv("recs.tsv", sep="\t", dtype={"user": str, "item": str})
    assert list(written["user"]) == ["user-07"] * 3 + ["user-03"] * 3  # the file's order, each user once
    histories = raw_histories(trained["data"])
    expected = Expected(trained["ELASTIC"])
    for user in ("user-07", "user-03"):
        items, scores = expected.top(histories[user], 3, user=user)
        rows = written[written["user"] == user]
        assert list(rows["item"]) == items
        np.testing.assert_allclose(rows["score"].to_numpy(), scores, rtol=1e-5, atol=1e-6)
    assert glob.glob("*.partial") == []


def test_histories_from_outside_the_dataset_skip_unknown_items_with_one_warning(trained, caplog):
    histories = {
        "new": ["item-3", "nope-1", "item-17", "item-3", "item-25"],
        "long": ["nope-2"] + [f"item-{i}" for i in range(1, 15)] + ["nope-3"],
    }
    with caplog.at_level(logging.WARNING):
        frame = recommend_for_histories(trained["SASRec"], histories, topk=4)
    warnings = [record.getMessage() for record in caplog.records if "not in dataset" in record.getMessage()]
    assert warnings == ["3 item tokens are not in dataset 'tokens' and were skipped."]
    expected = Expected(trained["SASRec"])
    for name, history in histories.items():
        items, scores = expected.top(history, 4)
        rows = frame[frame["user"] == name]
        assert list(rows["item"]) == items, name
        np.testing.assert_allclose(rows["score"].to_numpy(), scores, rtol=1e-5, atol=1e-6)
        assert not set(rows["item"]) & set(history)


def test_a_history_with_no_known_item_is_refused(trained):
    for histories in ([["item-1"], []], [["item-1"], ["nope-1", "nope-2"]]):
        with pytest.raises(ConfigError, match=r"1 histories hold no item of dataset 'tokens' .*: 1\. "):
            recommend_for_histories(trained["ELASTIC"], histories)


def test_a_user_with_one_interaction_is_skipped_or_explained(trained):
    frame = recommend(trained["SASRec"], topk=2)
    assert LONER not in set(frame["user"])
    one = recommend(trained["SASRec"], users="user-01", topk=2)  # a single token, not its characters
    pd.testing.assert_frame_equal(one, frame[frame["user"] == "user-01"].reset_index(drop=True))
    with pytest.raises(ConfigError, match=f"1 users have a single interaction.*'{LONER}'.*recommend_for_histories"):
        recommend(trained["SASRec"], users=["user-01", LONER])


def test_unknown_user_is_one_message_and_writes_nothing(trained, capsys):
    with open("users.txt", "w", encoding="utf-8") as f:
        f.write("user-01\nghost\n")
    args = ["--recommend", f"--checkpoint={trained['SASRec']}", "--users=users.txt", "--output=recs.tsv"]
    err = run_cli_expecting_error(capsys, args)
    assert "1 of the 2 users are not in dataset 'tokens'" in err and "'ghost'" in err
    assert not glob.glob("recs.tsv*")


def test_a_non_sequential_checkpoint_is_refused(trained, capsys):
    err = run_cli_expecting_error(capsys, ["--recommend", f"--checkpoint={trained['BPR']}", "--output=recs.tsv"])
    assert "holds BPR, a general model" in err and "sequential model" in err
    assert not glob.glob("recs.tsv*")


def test_a_missing_checkpoint_is_refused(capsys):
    err = run_cli_expecting_error(capsys, ["--recommend", "--checkpoint=saved/none.pth", "--output=recs.tsv"])
    assert "Checkpoint file not found: saved/none.pth" in err
    assert not glob.glob("recs.tsv*")


def test_an_existing_output_is_kept_unless_overwrite(trained, capsys):
    with open("recs.tsv", "w", encoding="utf-8") as f:
        f.write("keep me\n")
    args = ["--recommend", f"--checkpoint={trained['SASRec']}", "--topk=2", "--output=recs.tsv"]
    err = run_cli_expecting_error(capsys, args)
    assert "The output file recs.tsv exists: pass --overwrite" in err
    with open("recs.tsv", encoding="utf-8") as f:
        assert f.read() == "keep me\n"
    assert main([*args, "--overwrite"]) == 0
    written = pd.read_csv("recs.tsv", sep="\t", dtype={"user": str, "item": str})
    assert len(written) == 2 * (len(raw_histories(trained["data"])) - 1)


def test_a_failed_write_leaves_the_old_file_whole_and_no_partial_file(monkeypatch):
    frame = pd.DataFrame({"user": ["u"] * 3, "rank": [1, 2, 3], "item": ["a", "b", "c"], "score": [3.0, 2.0, 1.0]})
    with open("recs.tsv", "w", encoding="utf-8") as f:
        f.write("old\n")

    def write_half_then_fail(self, path, **kwargs):
        with open(path, "w", encoding="utf-8") as f:
            f.write("user\trank\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", write_half_then_fail)
    with pytest.raises(OSError):
        write_recommendations(frame, "recs.tsv", overwrite=True)
    with open("recs.tsv", encoding="utf-8") as f:
        assert f.read() == "old\n"
    with pytest.raises(OSError):
        write_recommendations(frame, "new.tsv")
    assert sorted(os.listdir(".")) == ["recs.tsv"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recommend", "--output=recs.tsv"], "--recommend needs --checkpoint=PATH"),
        (["--recommend", "--checkpoint=x.pth", "--output=recs.tsv", "--topk=ten"], "--topk takes a positive integer"),
        (["--recommend", "--checkpoint=x.pth", "--output=recs.tsv", "--topk=0"], "topk = 0 is invalid"),
        (["--recommend", "--checkpoint=x.pth", "--output=recs.tsv", "--epochs=3"], "remove --epochs."),
        (["--recommend", "--checkpoint=x.pth", "--output=r.tsv", "--verbose"], "remove --verbose."),
        (["--recommend", "--checkpoint=x.pth", "--output=no/dir/recs.tsv"], "The folder of --output=no/dir/recs.tsv"),
        (["--recommend", "--checkpoint=x.pth", "--output=r.tsv", "--users=none.txt"], "Cannot read the users file"),
    ],
)
def test_bad_options_are_one_message_each(capsys, args, message):
    assert message in run_cli_expecting_error(capsys, args)


def test_topk_stays_recboles_metric_key_without_recommend():
    _, overrides = parse_args(["--topk=[10,20]", "--epochs=2"])
    assert overrides == {"topk": "[10,20]", "epochs": "2"}
