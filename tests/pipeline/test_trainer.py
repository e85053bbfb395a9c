"""The plugin's trainer: a NaN loss keeps the last good checkpoint; resuming continues after the saved epoch;
runs started in the same second write distinct checkpoints."""

import hashlib
import multiprocessing
import os
import shutil

import pytest
import torch

from recbole_elastic.compat import load_checkpoint
from recbole_elastic.config import build_config
from recbole_elastic.errors import TrainingDivergedError
from recbole_elastic.model import ELASTIC
from recbole_elastic.optim import SparseAwareOptimizer
from recbole_elastic.quick_start import build_data_and_model, run
from recbole_elastic.trainer import get_trainer

from tests.helpers import tiny_run_config


def test_nan_loss_stops_with_the_epoch_and_keeps_the_last_good_checkpoint(tiny_data, monkeypatch):
    from recbole.trainer import Trainer

    state = {"epoch": 0}
    train_epoch, calculate_loss = Trainer._train_epoch, ELASTIC.calculate_loss

    def tracking_epoch(self, train_data, epoch_idx, *args, **kwargs):
        state["epoch"] = epoch_idx
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    def diverging_loss(self, interaction):  # epoch 0 trains normally, epoch 1's loss is NaN
        loss = calculate_loss(self, interaction)
        return loss * float("nan") if state["epoch"] >= 1 else loss

    monkeypatch.setattr(Trainer, "_train_epoch", tracking_epoch)
    monkeypatch.setattr(ELASTIC, "calculate_loss", diverging_loss)
    config = tiny_run_config(tiny_data, epochs=3)
    with pytest.raises(TrainingDivergedError) as error:
        run("ELASTIC", "tiny", config_dict=config)
    message = str(error.value)
    assert "became NaN in epoch 1" in message and "last good checkpoint is kept" in message
    kept = message.split("kept: ")[1].split(".pth")[0] + ".pth"
    checkpoint = load_checkpoint(kept)
    assert checkpoint["epoch"] == 0  # written after the good epoch, intact and loadable
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert not [f for f in os.listdir(os.path.dirname(kept)) if f.endswith(".partial")]


def test_resume_continues_after_the_saved_epoch_into_a_new_file(tiny_data):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    assert os.path.basename(first["model_file"]).startswith("ELASTIC-tiny-")  # model and dataset in the name
    with open(first["model_file"], "rb") as f:
        original = f.read()
    resumed = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=3), checkpoint=first["model_file"])
    assert resumed["epochs"] == 2 and resumed["first_epoch"] == 1  # epochs 1 and 2: epoch 0 is not trained again
    assert resumed["model_file"] != first["model_file"]
    with open(first["model_file"], "rb") as f:
        assert f.read() == original  # the file resumed from is never written
    saved = load_checkpoint(resumed["model_file"])
    assert saved["epoch"] >= 0 and saved["config"]["epochs"] == 3  # the resumed run's best so far, its own config


def test_elastic_memory_trains_with_lazy_adam_and_resumes_its_state(tiny_data):
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))
    saved = load_checkpoint(first["model_file"])["optimizer"]
    assert set(saved) == {"dense", "sparse"}  # RecBole's Adam for the rest, lazy Adam for the memory values
    config = build_config("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=2))
    *_, model = build_data_and_model(config)
    trainer = get_trainer(config)(config, model)
    assert isinstance(trainer.optimizer, SparseAwareOptimizer)
    trainer.resume_checkpoint(first["model_file"])
    resumed = trainer.optimizer.state_dict()["sparse"]["state"][0]
    expected = saved["sparse"]["state"][0]
    assert resumed["step"] == expected["step"] > 0
    assert torch.equal(resumed["exp_avg"], expected["exp_avg"]) and resumed["exp_avg"].abs().sum() > 0
    assert torch.equal(resumed["exp_avg_sq"], expected["exp_avg_sq"])


@pytest.mark.parametrize(
    "model_name, settings",
    [
        ("CausalSASRec", {"hidden_dropout_prob": 0.3, "attn_dropout_prob": 0.3}),  # packed windows, dropout
        ("ELASTIC", {"loss_type": "BPR"}),  # RecBole's batches and negative sampler
    ],
)
def test_a_resumed_run_trains_the_epochs_an_uninterrupted_run_trains(tiny_data, model_name, settings):
    """Resumed from epoch 0's checkpoint, epochs 1 and 2 give the uninterrupted run's validation scores and weights,
    bit for bit: batch order, window packing, dropout masks and negatives go on from where the checkpoint was."""

    def build(epochs: int):
        config = build_config(model_name, "tiny", config_dict=tiny_run_config(tiny_data, epochs=epochs, **settings))
        _, train_data, valid_data, _, model = build_data_and_model(config)
        return get_trainer(config)(config, model), train_data, valid_data

    uninterrupted, train_data, valid_data = build(epochs=1)
    uninterrupted.fit(train_data, valid_data)  # epoch 0, checkpointed (its first validation is the best so far)
    checkpoint = shutil.copy(uninterrupted.saved_model_file, f"{uninterrupted.saved_model_file}.epoch0")
    uninterrupted.epochs = 3
    uninterrupted.start_epoch = 1
    uninterrupted.fit(train_data, valid_data)  # epochs 1 and 2, in the same process

    resumed, train_data, valid_data = build(epochs=3)  # a new process's state: seeded again, a fresh model
    resumed.resume_checkpoint(checkpoint)
    resumed.fit(train_data, valid_data)
    assert resumed.valid_curve == uninterrupted.valid_curve[1:]
    assert len(set(resumed.valid_curve)) > 1  # the epochs trained: scores moved
    assert state_digest(resumed.model.state_dict()) == state_digest(uninterrupted.model.state_dict())


def test_a_checkpoint_without_random_state_still_resumes_and_says_so(tiny_data, caplog):
    """Checkpoints written before the random state was kept resume as before, from the seed's streams."""
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))["model_file"]
    checkpoint = load_checkpoint(first)
    del checkpoint["random_state"]
    old = os.path.join(os.path.dirname(first), "old.pth")
    torch.save(checkpoint, old)
    with caplog.at_level("INFO"):
        resumed = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=2), checkpoint=old)
    assert resumed["epochs"] == 1 and resumed["first_epoch"] == 1
    assert "The checkpoint keeps no random state" in caplog.text
    saved = load_checkpoint(resumed["model_file"])  # the restored state, or a better epoch 1 with its state
    assert ("random_state" in saved) == (saved["epoch"] == 1)


def test_a_run_that_saves_nothing_leaves_no_file(tiny_data):
    config = build_config("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    _, train_data, valid_data, _, model = build_data_and_model(config)
    trainer = get_trainer(config)(config, model)
    trainer.fit(train_data, valid_data, saved=False)  # the name claimed when training started is given back
    assert os.listdir(config["checkpoint_dir"]) == []


def test_a_claim_interrupted_before_training_leaves_no_file(tiny_data, monkeypatch):
    """Under DDP the claim ends in a broadcast, where a killed process or a lost rank raises after the name is
    created; the same for resuming, whose first save can fail. Either way the empty claim is given back."""
    config = build_config("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data))
    _, train_data, valid_data, _, model = build_data_and_model(config)
    trainer = get_trainer(config)(config, model)
    claim = type(trainer).claim_checkpoint_file

    def claim_then_lose_a_rank(self):
        claim(self)
        assert os.listdir(config["checkpoint_dir"])  # the name was created
        raise RuntimeError("a rank was lost during the broadcast")

    monkeypatch.setattr(type(trainer), "claim_checkpoint_file", claim_then_lose_a_rank)
    with pytest.raises(RuntimeError, match="rank was lost"):
        trainer.fit(train_data, valid_data)
    assert os.listdir(config["checkpoint_dir"]) == []
    monkeypatch.undo()
    first = run("ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data, epochs=1))["model_file"]
    trainer = get_trainer(config)(config, model)
    monkeypatch.setattr(type(trainer), "_save_checkpoint", lambda *args, **kwargs: 1 / 0)  # a full disk, say
    with pytest.raises(ZeroDivisionError):
        trainer.resume_checkpoint(first)
    assert os.listdir(config["checkpoint_dir"]) == [os.path.basename(first)]


def state_digest(state_dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        digest.update(name.encode() + tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def train_in_a_shared_second(data_path: str, seed: int, start_together, results) -> None:
    """One of the runs below, in its own process: ELASTIC's trainer with its checkpoint time fixed (a subclass: the
    two runs start in one second, whatever the clock does), built, then trained once both are built."""
    config = build_config("ELASTIC", "tiny", config_dict=tiny_run_config(data_path, seed=seed))
    _, train_data, valid_data, _, model = build_data_and_model(config)

    class SameSecondTrainer(get_trainer(config)):
        def checkpoint_time(self) -> str:
            return "Jan-01-2026_00-00-00"

    trainer = SameSecondTrainer(config, model)
    start_together.wait(timeout=120)  # both trainers exist, neither has saved: the names are not taken yet
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    results.put((seed, trainer.saved_model_file, state_digest(trainer.model.state_dict())))


def test_runs_started_in_the_same_second_write_distinct_checkpoints(tiny_data):
    context = multiprocessing.get_context("spawn")
    start_together, results = context.Barrier(2), context.Queue()
    runs = [
        context.Process(target=train_in_a_shared_second, args=(tiny_data, seed, start_together, results))
        for seed in (1, 2)
    ]
    for process in runs:
        process.start()
    finished = [results.get(timeout=300) for _ in runs]
    for process in runs:
        process.join(timeout=60)
        assert process.exitcode == 0
    files = {seed: model_file for seed, model_file, _ in finished}
    assert sorted(os.path.basename(f) for f in files.values()) == [
        "ELASTIC-tiny-Jan-01-2026_00-00-00-1.pth",
        "ELASTIC-tiny-Jan-01-2026_00-00-00.pth",
    ]
    for seed, model_file, digest in finished:  # each file holds its own run's trained model, whole
        checkpoint = load_checkpoint(model_file)
        assert checkpoint["config"]["seed"] == seed
        assert state_digest(checkpoint["state_dict"]) == digest  # one epoch: the saved model is the trained one
