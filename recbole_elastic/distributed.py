"""Distributed (DDP) training through RecBole's own mechanism: ``run_distributed(..., nproc=N)``.

RecBole starts a distributed run by putting ``local_rank``, ``nproc``, ``world_size``, ``ip``, ``port`` and
``offset`` in each process's config: ``Config._init_device`` then joins the process group (gloo on CPU through
``ElasticConfig``, NCCL on CUDA), the data loaders shard with a ``DistributedSampler``, and the trainer
(:class:`~recbole_elastic.trainer.DistributedElasticTrainer`) wraps the model in ``DistributedDataParallel`` and
all-reduces the gradients. This module only starts the processes: each spawned rank runs
:func:`recbole_elastic.quick_start.run` with its layout added to the run settings.
"""

import os
import pickle
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist

from recbole_elastic.atomic import atomic_path, cleanup_on_sigterm
from recbole_elastic.config import build_config, run_settings
from recbole_elastic.data import ensure_dataset
from recbole_elastic.errors import ConfigError, ElasticError
from recbole_elastic.quick_start import run


def run_distributed(
    model: str = "ELASTIC",
    dataset: str = "ml-100k",
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    nproc: int = 1,
    world_size: int = -1,
    ip: str = "localhost",
    port: str = "5678",
    group_offset: int = 0,
    saved: bool = True,
    checkpoint: Optional[str] = None,
) -> Optional[Dict[str, Any]]:
    """Train with ``nproc`` processes on this machine, ``world_size`` in all, as RecBole's ``run`` does.

    ``ip:port`` is where global rank 0 listens; this machine's processes get global ranks ``group_offset`` to
    ``group_offset + nproc - 1``. On CUDA each process takes one of ``gpu_id`` (NCCL); with ``gpu_id=''`` or no
    CUDA the processes run on CPU (gloo).

    Returns :func:`recbole_elastic.quick_start.run`'s result from global rank 0, with ``rank_parameter_digests``
    (one digest of the trained parameters per global rank; all equal when gradients were synchronised) and
    ``world_size``; None on a machine that does not hold rank 0. Test metrics are merged over the ranks' shards by
    RecBole; evaluate the checkpoint in one process (``evaluate_checkpoint``) for exact single-process numbers.
    With ``nproc=1`` and no ``world_size`` this is exactly ``quick_start.run`` in this process. ``checkpoint``
    resumes training from a saved file, which every machine must then hold at that path.
    """
    if nproc < 1:
        raise ConfigError(f"nproc must be at least 1, got {nproc}.")
    if nproc == 1 and world_size <= 0:
        return run(model, dataset, config_file_list, config_dict, saved=saved, checkpoint=checkpoint)
    if world_size == -1:
        world_size = nproc
    if group_offset < 0 or group_offset + nproc > world_size:
        raise ConfigError(
            f"This machine's processes would be ranks {group_offset}..{group_offset + nproc - 1}, outside "
            f"world_size={world_size}. Use world_size = the processes on all machines together, and group_offset = "
            "the processes on the machines before this one."
        )

    # Read the config and fetch the dataset here, once: errors surface before any process starts, and the ranks
    # do not download the same archive side by side.
    config = build_config(model, dataset, config_file_list, config_dict)
    ensure_dataset(config)
    # RecBole creates these with check-then-create (utils.ensure_dir); ranks starting together would race.
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    layout = {"world_size": world_size, "ip": ip, "port": str(port), "nproc": nproc, "offset": group_offset}

    # The ranks share this machine's cores; leave the user's own setting alone.
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc)
    exchange = tempfile.mkdtemp(prefix="recbole-elastic-ranks-")
    try:
        try:
            ranks = torch.multiprocessing.spawn(
                _rank_main,
                args=(model, dataset, config_file_list, config_dict, layout, saved, checkpoint, exchange, threads),
                nprocs=nproc,
                join=False,
            )
            _join_ranks(ranks)
        except torch.multiprocessing.ProcessRaisedException:
            _raise_rank_error(exchange)
            raise
        result_file = os.path.join(exchange, "result.pkl")
        if not os.path.isfile(result_file):
            return None
        with open(result_file, "rb") as f:
            return pickle.load(f)
    finally:
        shutil.rmtree(exchange, ignore_errors=True)


RANK_CLEANUP_SECONDS = 30  # a rank stuck in a collective with a rank already gone gets no longer to clean up


def _join_ranks(ranks: torch.multiprocessing.ProcessContext) -> None:
    """Wait for the ranks to finish. If this process is stopped first (Ctrl-C, or ``kill``, which the CLI turns
    into ``SystemExit``), stop them and wait for their cleanup: torch would leave them to die without it."""
    try:
        while not ranks.join():
            pass
    except (KeyboardInterrupt, SystemExit):
        for process in ranks.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the rank's cleanup_on_sigterm runs its finally blocks
        deadline = time.monotonic() + RANK_CLEANUP_SECONDS
        for process in ranks.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        raise


def _rank_main(
    local_rank, model, dataset, config_file_list, config_dict, layout, saved, checkpoint, exchange, threads
) -> None:
    """One spawned process: ``quick_start.run`` with this rank's layout, then leave the process group."""
    if threads:
        torch.set_num_threads(threads)
    with cleanup_on_sigterm():  # a killed rank 0 removes its half-written checkpoint
        try:
            result = run(
                model=model,
                dataset=dataset,
                config_file_list=config_file_list,
                config_dict=run_settings(model, config_dict, process={**layout, "local_rank": local_rank}),
                saved=saved,
                checkpoint=checkpoint,
            )
            if dist.get_rank() == 0:
                _write_pickle(os.path.join(exchange, "result.pkl"), result)
        except ElasticError as error:
            # The parent re-raises it, so the CLI prints the message as for a one-process run.
            _write_pickle(os.path.join(exchange, f"error-{local_rank}.pkl"), error)
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def _write_pickle(path: str, obj: Any) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        pickle.dump(obj, f)


def _raise_rank_error(exchange: str) -> None:
    """Re-raise the first user-facing error a rank wrote, if any."""
    for name in sorted(os.listdir(exchange)):
        if name.startswith("error-") and name.endswith(".pkl"):
            with open(os.path.join(exchange, name), "rb") as f:
                error = pickle.load(f)
            raise error
