"""Two-process DDP training of ELASTIC on CPU (gloo), through RecBole's distributed mechanism."""

import multiprocessing
import os
import signal
import socket
import time

import pytest
import torch

from recbole.utils import get_trainer

from recbole_elastic import distributed
from recbole_elastic.compat import load_checkpoint
from recbole_elastic.distributed import run_distributed
from recbole_elastic.errors import ConfigError, DatasetFormatError
from recbole_elastic.quick_start import load_data_and_model

from tests.helpers import (
    assert_metrics_match_the_checkpoint,
    cli_args,
    kill_once_training_starts,
    tiny_run_config,
    write_tiny_dataset,
)

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with gloo is needed",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


WARMUP_STEPS = 50


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One 1-epoch, 2-process CPU run on the tiny dataset, shared by this module's tests."""
    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # RecBole's log folders land here, for the ranks as well
        data_path = write_tiny_dataset(str(root / "data"))
        # a warmup longer than the run: the checkpoint's learning rate tells how many schedule steps were taken
        config_dict = tiny_run_config(data_path, warmup_steps=WARMUP_STEPS)
        result = run_distributed("ELASTIC", "tiny", config_dict=config_dict, nproc=2, port=str(free_port()))
        yield result


def test_two_process_run_trains_and_reports_metrics(two_process_run):
    result = two_process_run
    assert result["world_size"] == 2
    assert result["epochs"] == 1
    assert set(result["test_result"]) == {"recall@10", "mrr@10", "ndcg@10", "hit@10", "precision@10"}
    # RecBole merges the ranks' metrics, each rounded to 4 decimals: hence the wider tolerance
    assert_metrics_match_the_checkpoint(result["test_result"], result["model_file"], tolerance=2e-4)
    assert result["best_valid_score"] == result["best_valid_result"]["mrr@10"]  # RecBole's default valid_metric


def test_ranks_hold_identical_parameters_after_training(two_process_run):
    digests = two_process_run["rank_parameter_digests"]
    assert len(digests) == 2
    assert digests[0] == digests[1]


def test_learning_rate_schedule_steps_once_per_optimizer_step_of_a_rank(two_process_run):
    """Each rank's optimizers (RecBole's Adam and the memory's LazyAdam) took one schedule step per step they took
    (their own batches, not the ranks' together): the saved rate is learning_rate * steps / warmup_steps."""
    checkpoint = load_checkpoint(two_process_run["model_file"])
    learning_rate = checkpoint["config"]["learning_rate"]
    for optimizer in checkpoint["optimizer"].values():  # "dense" and "sparse"
        (steps,) = {int(state["step"]) for state in optimizer["state"].values()}  # every parameter, every batch
        assert 0 < steps < WARMUP_STEPS
        for group in optimizer["param_groups"]:
            assert group["initial_lr"] == learning_rate
            assert group["lr"] == pytest.approx(learning_rate * steps / WARMUP_STEPS, rel=1e-12)


def test_checkpoint_loads_and_evaluates_in_one_process(two_process_run):
    config, model, _, _, _, test_data = load_data_and_model(two_process_run["model_file"])
    assert config["single_spec"]
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    assert_metrics_match_the_checkpoint(dict(result), two_process_run["model_file"])
    # The tiny dataset's 40 test users split evenly over the 2 ranks, so RecBole's merge of the ranks' metrics
    # equals the one-process evaluation up to its rounding to 4 decimals.
    for name, value in result.items():
        assert value == pytest.approx(two_process_run["test_result"][name], abs=2e-4), name


def test_a_ranks_error_reaches_the_caller(tiny_data):
    # Filtering leaves nothing to train on: each rank raises DatasetFormatError; the caller gets it, not a
    # traceback from torch.multiprocessing, so the CLI prints the message as for a one-process run.
    config_dict = tiny_run_config(tiny_data, user_inter_num_interval="[100,inf)")
    with pytest.raises(DatasetFormatError, match="Filtering left 0 interactions"):
        run_distributed("ELASTIC", "tiny", config_dict=config_dict, nproc=2, port=str(free_port()))


def test_ranks_must_fit_in_world_size(tiny_data):
    with pytest.raises(ConfigError, match="outside world_size=2"):
        run_distributed(
            "ELASTIC", "tiny", config_dict=tiny_run_config(tiny_data), nproc=2, world_size=2, group_offset=1
        )


def test_killing_the_launcher_stops_the_ranks_and_their_cleanup_runs(tmp_path):
    """SIGTERM to the launching process alone (as ``kill PID`` sends it): the ranks are stopped too, not left
    training, and rank 0 removes its empty checkpoint claim before the launcher exits."""
    data_path = write_tiny_dataset(str(tmp_path / "data"))
    args = cli_args(data_path, model="CausalSASRec") + ["--nproc=2", f"--port={free_port()}"]
    returncode, stderr = kill_once_training_starts(args, data_path)
    assert returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert os.listdir(os.path.join(data_path, "saved")) == []


def ignore_sigterm_and_sleep(ready) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(600)


def test_a_rank_that_does_not_stop_is_killed_after_the_cleanup_time(monkeypatch):
    """A rank that cannot act on SIGTERM (stuck in a collective with a rank already gone) is killed once the
    cleanup time is over, so stopping the launcher never hangs."""
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    stuck = context.Process(target=ignore_sigterm_and_sleep, args=(ready,))
    stuck.start()
    assert ready.wait(60)

    class Interrupted:  # torch's ProcessContext, interrupted while waiting
        processes = [stuck]

        def join(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "RANK_CLEANUP_SECONDS", 1)
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            distributed._join_ranks(Interrupted())
        assert not stuck.is_alive() and stuck.exitcode == -signal.SIGKILL
        assert time.monotonic() - start < 30
    finally:
        stuck.kill()  # not left sleeping if the test fails
