"""Distributed (DDP) training through RecBole's own mechanism: ``run_distributed(..., nproc=N)``.

RecBole starts a distributed run by putting ``local_rank``, ``nproc``, ``world_size``, ``ip``, ``port`` and
``offset`` in each process's config: ``Config._init_device`` then joins the process group, the data loaders shard
with a ``DistributedSampler``, and the trainer wraps the model in ``DistributedDataParallel`` and all-reduces the
gradients (``set_reduce_hook`` + ``sync_grad_loss`` on every batch). Here each spawned rank runs
:func:`recbole_elastic.quick_start.run` with those keys.

RecBole 1.2.1 assumes CUDA and a shared clock; what this module and ``ElasticConfig._init_device`` change, only for
distributed configs (``single_spec`` False):

* the process group uses gloo on CPU (``ElasticConfig._init_device``), NCCL on CUDA as before;
* DDP is built without ``device_ids`` on CPU (a CPU module rejects them), and BatchNorm layers are not converted to
  SyncBatchNorm there (it only runs on GPUs);
* every rank uses rank 0's checkpoint file name (RecBole derives it from each process's local time);
* loading the best model waits for every rank (barrier), then rank 0 reads the checkpoint it wrote and broadcasts
  the weights, so the other ranks, even on other machines, never read a file they may not have;
* after training, the ranks compare digests of their parameters (logged if they differ) and the digests are
  returned as ``rank_parameter_digests``.

The training loop is RecBole's, gradient synchronisation included.
"""

import hashlib
import os
import pickle
import shutil
import tempfile
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recbole.utils import get_trainer

from recbole_elastic.compat import load_checkpoint
from recbole_elastic.errors import ConfigError, ElasticError
from recbole_elastic.utils import atomic_path

# What a rank's distributed trainer leaves for its worker after training (one run per spawned process).
_rank_state: Dict[str, Any] = {}
_trainer_classes: Dict[type, type] = {}


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
    from recbole_elastic.quick_start import build_config, run

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

    config_dict = dict(config_dict or {})
    # Read the config and fetch the dataset here, once: errors surface before any process starts, and the ranks
    # do not download the same archive side by side.
    from recbole_elastic.utils import ensure_dataset

    config = build_config(model, dataset, config_file_list, config_dict)
    ensure_dataset(config)
    # RecBole creates these with check-then-create (utils.ensure_dir); ranks starting together would race.
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    config_dict.update({"world_size": world_size, "ip": ip, "port": str(port), "nproc": nproc, "offset": group_offset})

    # The ranks share this machine's cores; leave the user's own setting alone.
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc)
    exchange = tempfile.mkdtemp(prefix="recbole-elastic-ranks-")
    try:
        try:
            torch.multiprocessing.spawn(
                _rank_main,
                args=(model, dataset, config_file_list, config_dict, saved, checkpoint, exchange, threads),
                nprocs=nproc,
                join=True,
            )
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


def build_trainer(config, model):
    """The trainer :func:`recbole_elastic.quick_start.run` should build: RecBole's trainer for the model, in its
    distributed form when the config is distributed (``single_spec`` False). Unchanged for one process."""
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    if not config["single_spec"]:
        trainer_class = distributed_trainer_class(trainer_class)
    return trainer_class(config, model)


def distributed_trainer_class(base: type) -> type:
    """A subclass of RecBole trainer ``base`` for distributed configs (see the module docstring)."""
    if base in _trainer_classes:
        return _trainer_classes[base]

    class DistributedTrainer(base):
        def __init__(self, config, model):
            on_cuda = config["device"].type == "cuda"
            if on_cuda:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            # RecBole's AbstractTrainer builds DDP with device_ids=[local_rank], which a CPU module rejects: let it
            # build the single-process trainer, then wrap the model here.
            config["single_spec"] = True
            try:
                super().__init__(config, model)
            finally:
                config["single_spec"] = False
            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[config["local_rank"]] if on_cuda else None
            )
            self.saved_model_file = _broadcast_object(self.saved_model_file)

        def fit(self, *args, **kwargs):
            result = super().fit(*args, **kwargs)
            digests = _gather_object(parameter_digest(self.model))
            _rank_state["parameter_digests"] = digests
            if len(set(digests)) > 1:
                self.logger.warning(
                    f"The ranks' parameters differ after training (digests {digests}): gradients were not "
                    "synchronised. A custom _train_epoch must call set_reduce_hook() and add sync_grad_loss()."
                )
            return result

        @torch.no_grad()
        def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
            if eval_data and load_best_model:
                self._load_from_rank_zero(model_file or self.saved_model_file)
            return super().evaluate(
                eval_data, load_best_model=False, model_file=model_file, show_progress=show_progress
            )

        def _load_from_rank_zero(self, checkpoint_file: str) -> None:
            dist.barrier()  # every rank has finished training, and rank 0 has written the checkpoint
            other_parameter = None
            if dist.get_rank() == 0:
                checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
                self.model.load_state_dict(checkpoint["state_dict"])
                other_parameter = checkpoint.get("other_parameter")
                self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
            for tensor in self.model.state_dict().values():  # share storage with the parameters and buffers
                dist.broadcast(tensor, src=0)
            self.model.load_other_parameter(_broadcast_object(other_parameter))

    DistributedTrainer.__name__ = DistributedTrainer.__qualname__ = f"Distributed{base.__name__}"
    _trainer_classes[base] = DistributedTrainer
    return DistributedTrainer


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameter names and exact values."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _broadcast_object(obj: Any) -> Any:
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _gather_object(obj: Any) -> List[Any]:
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _rank_main(local_rank, model, dataset, config_file_list, config_dict, saved, checkpoint, exchange, threads) -> None:
    """One spawned process: ``quick_start.run`` with this rank's config, then leave the process group."""
    from recbole_elastic import quick_start

    if threads:
        torch.set_num_threads(threads)
    _rank_state.clear()
    try:
        result = quick_start.run(
            model=model,
            dataset=dataset,
            config_file_list=config_file_list,
            config_dict={**config_dict, "local_rank": local_rank},
            saved=saved,
            checkpoint=checkpoint,
        )
        if dist.get_rank() == 0:
            result["rank_parameter_digests"] = _rank_state.get("parameter_digests")
            result["world_size"] = dist.get_world_size()
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
