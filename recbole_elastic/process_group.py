"""Joining a distributed run's process group on CPU or CUDA, and the few collectives the plugin's trainer uses.

RecBole 1.2.1 hard-codes NCCL and CUDA for every distributed run; ``ElasticConfig._init_device`` calls
:func:`init_cpu_process_group` instead when the run is on CPU.
"""

import hashlib
import os
from typing import Any, Dict, List

import torch
import torch.distributed as dist

from recbole_elastic.errors import ConfigError


def distributed_on_cuda(final: Dict) -> bool:
    """Whether a distributed config runs on CUDA; checks there is a ``gpu_id`` for each local process.

    Normalises ``gpu_id`` and sets ``CUDA_VISIBLE_DEVICES`` exactly as RecBole's ``_init_device`` does first.
    """
    gpu_id = final["gpu_id"]
    gpu_id = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    final["gpu_id"] = gpu_id
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
    if len(gpu_id) == 0 or not torch.cuda.is_available():
        return False
    if len(gpu_id.split(",")) < final["nproc"]:
        raise ConfigError(
            f"nproc={final['nproc']} processes on this machine need as many GPUs, but gpu_id is '{gpu_id}'. "
            f"Set gpu_id to {final['nproc']} comma-separated GPU ids (e.g. --gpu_id=0,1), or gpu_id='' for CPU."
        )
    return True


def init_cpu_process_group(final: Dict) -> None:
    """Join the distributed run with gloo on CPU, as RecBole's ``_init_device`` does with NCCL on CUDA."""
    dist.init_process_group(
        backend="gloo",
        rank=final["local_rank"] + final["offset"],
        world_size=final["world_size"],
        init_method=f"tcp://{final['ip']}:{final['port']}",
    )
    final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def broadcast_object(obj: Any) -> Any:
    """Global rank 0's ``obj`` on every rank."""
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in global rank order, on every rank."""
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the model's parameter names and exact values."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
