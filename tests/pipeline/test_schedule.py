"""Learning-rate warmup and decay (``warmup_steps``, ``lr_schedule``): the rate of every optimizer step, the
default, resuming, and bad values."""

import math
import shutil

import pytest
import torch

from recbole.trainer import Trainer
from recbole.utils import init_seed

from recbole_elastic.config import build_config
from recbole_elastic.errors import ConfigError
from recbole_elastic.optim import SparseAwareOptimizer
from recbole_elastic.quick_start import build_data_and_model
from recbole_elastic.trainer import SparseAwareTrainer, get_trainer

from tests.helpers import cli_args, no_checkpoints, run_cli_expecting_error, tiny_run_config

LEARNING_RATE = 0.01


def expected_rate(step: int, total: int, warmup: int, decay: str) -> float:
    """The schedule written out for a run with ``total > warmup`` steps (so no clamping is needed)."""
    if step < warmup:
        return LEARNING_RATE * step / warmup
    if decay == "linear":
        return LEARNING_RATE * (total - step) / (total - warmup)
    if decay == "cosine":
        return LEARNING_RATE * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2
    return LEARNING_RATE


def build_run(data_path, **settings):
    """ELASTIC on the tiny dataset: ``(config, model, train_data)``."""
    config_dict = tiny_run_config(data_path, learning_rate=LEARNING_RATE, **settings)
    config = build_config("ELASTIC", "tiny", config_dict=config_dict)
    _, train_data, _, _, model = build_data_and_model(config)
    return config, model, train_data


def build_trainer(data_path, **settings):
    config, model, train_data = build_run(data_path, **settings)
    return get_trainer(config)(config, model), train_data


def fit_from(trainer, train_data, weights):
    """Train ``trainer`` from ``weights`` with the data order and dropout of seed 7; the trained weights."""
    trainer.model.load_state_dict(weights)
    train_data.generator.manual_seed(7)  # RecBole's loader keeps one shuffling generator across epochs and fits
    init_seed(7, True)
    trainer.fit(train_data, saved=False)
    return {name: value.clone() for name, value in trainer.model.state_dict().items()}


def record_rates(optimizer):
    """The learning rate each optimizer step used, per torch optimizer inside ``optimizer`` (RecBole's and, for
    ELASTIC's interest memory, LazyAdam), read by a pre-step hook."""
    inner = [optimizer.dense, optimizer.sparse] if isinstance(optimizer, SparseAwareOptimizer) else [optimizer]
    rates = [[] for _ in inner]
    for used, torch_optimizer in zip(rates, inner):
        torch_optimizer.register_step_pre_hook(lambda opt, *_, used=used: used.append(opt.param_groups[0]["lr"]))
    return rates


@pytest.mark.parametrize("warmup, decay", [(4, "constant"), (0, "linear"), (4, "linear"), (0, "cosine"), (4, "cosine")])
def test_every_optimizer_step_uses_the_scheduled_rate(tiny_data, warmup, decay):
    trainer, train_data = build_trainer(
        tiny_data, epochs=2, train_batch_size=32, warmup_steps=warmup, lr_schedule=decay
    )
    assert isinstance(trainer.optimizer, SparseAwareOptimizer)  # the memory's LazyAdam must follow it too
    rates = record_rates(trainer.optimizer)
    trainer.fit(train_data, saved=False)
    total = 2 * len(train_data)
    assert total > 2 * warmup + 4  # some steps of warmup, some of decay
    expected = [expected_rate(step, total, warmup, decay) for step in range(total)]
    for used in rates:  # RecBole's Adam and LazyAdam
        assert used == pytest.approx(expected, abs=1e-12)


def test_default_is_recboles_constant_rate_and_training(tiny_data):
    """No warmup and a constant rate by default: every step uses learning_rate, no scheduler is attached, and the
    trained weights are the ones RecBole's own Trainer gives."""
    trainer, train_data = build_trainer(tiny_data, epochs=2, memory_sparse_updates=False)
    initial = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    (rates,) = record_rates(trainer.optimizer)
    trained = fit_from(trainer, train_data, initial)
    assert rates == [LEARNING_RATE] * (2 * len(train_data))
    assert all("initial_lr" not in group for group in trainer.optimizer.param_groups)

    trained_by_recbole = fit_from(Trainer(trainer.config, trainer.model), train_data, initial)
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)  # it trained
    for name, value in trained.items():
        assert torch.equal(value, trained_by_recbole[name]), name


def test_resumed_run_continues_the_schedule(tiny_data):
    settings = {"epochs": 3, "train_batch_size": 32, "warmup_steps": 3, "lr_schedule": "cosine"}
    config, model, train_data = build_run(tiny_data, **settings)

    class KeepingEachEpoch(get_trainer(config)):
        """Also copies each checkpoint to ``<file>.epoch<N>``."""

        def _save_checkpoint(self, epoch, verbose=True, **kwargs):
            super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
            shutil.copyfile(self.saved_model_file, f"{self.saved_model_file}.epoch{epoch}")

    trainer = KeepingEachEpoch(config, model)
    rates = record_rates(trainer.optimizer)
    trainer.fit(train_data, saved=True)  # no validation data: a checkpoint after every epoch
    per_epoch = len(train_data)

    resumed, train_data = build_trainer(tiny_data, **settings)
    resumed.resume_checkpoint(f"{trainer.saved_model_file}.epoch0")
    resumed_rates = record_rates(resumed.optimizer)
    resumed.fit(train_data, saved=True)
    total = 3 * per_epoch
    expected = [expected_rate(step, total, 3, "cosine") for step in range(per_epoch, total)]
    assert len(resumed_rates) == 2  # RecBole's Adam and LazyAdam
    for full, after_resume in zip(rates, resumed_rates):
        assert after_resume == pytest.approx(expected, abs=1e-12)
        assert after_resume == pytest.approx(full[per_epoch:], abs=1e-12)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("--warmup_steps=-5", "warmup_steps = -5 is invalid: it must be an integer >= 0"),
        ("--warmup_steps=0.5", "warmup_steps = 0.5 is invalid: it must be an integer >= 0"),
        ("--lr_schedule=step", "lr_schedule = 'step' is invalid: it must be one of ['constant', 'linear', 'cosine']"),
    ],
)
def test_bad_value_is_one_message_naming_the_key(tiny_data, capsys, setting, message):
    err = run_cli_expecting_error(capsys, cli_args(tiny_data) + [setting])
    assert message in err and f"--{setting[2:].split('=')[0]}=..." in err
    assert no_checkpoints(tiny_data)


def test_bad_value_in_recboles_own_config_stops_the_trainer(tiny_data):
    """A config that did not come through the plugin (RecBole's own Config, as in RecBole's ``run_recbole`` after
    ``register()``, which makes SparseAwareTrainer RecBole's ELASTICTrainer) is checked by the trainer."""
    from recbole.config import Config

    settings = {**tiny_run_config(tiny_data), "train_neg_sample_args": None, "lr_schedule": "exponential"}
    config = Config("SASRec", "tiny", config_dict=settings)
    with pytest.raises(ConfigError, match="lr_schedule = 'exponential' is invalid"):
        SparseAwareTrainer(config, None)
