"""The random streams a training epoch draws from, kept in each checkpoint so that a resumed run trains the epochs
an uninterrupted run would have trained, to the last digit where the run itself is deterministic (one CPU thread).

A training epoch draws from the train loader's shuffling generator (RecBole's ``generator``: the order of the
batches), the packing generator of all-positions training (which windows share a batch), torch's global generator
(dropout, sampled-softmax negatives), NumPy's (RecBole's negative sampler) and Python's. RecBole seeds them all
when the run starts and its checkpoint keeps none of them, so a resumed run used to replay the first epoch's batch
order and dropout masks from the checkpoint on. A checkpoint is written after validation, which draws from none of
them, so the state it keeps is the one the next epoch starts from.
"""

import random
from typing import Any, Dict

import numpy as np
import torch

# The train loader's own generators, each drawn from once as an epoch starts: RecBole's shuffling generator and the
# all-positions loader's packing generator (recbole_elastic.windows).
LOADER_GENERATORS = ("generator", "packing_generator")


def capture_random_state(train_data: Any) -> Dict[str, Any]:
    """Every stream's state now: the process-wide generators and those of ``train_data`` (a RecBole loader)."""
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in _loader_generators(train_data).items():
        state[name] = generator.get_state()
    return state


def restore_random_state(state: Dict[str, Any], train_data: Any, process_wide: bool = True) -> None:
    """Put ``train_data``'s generators, and with ``process_wide`` the process's own, back to ``state``.

    In a distributed run the loader's generators are the same on every rank (saved by rank 0, restored on each),
    but each rank's process-wide generators are its own and only rank 0's are saved: pass ``process_wide=False``.
    """
    for name, generator in _loader_generators(train_data).items():
        if name in state:
            generator.set_state(state[name])
    if not process_wide:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _loader_generators(train_data: Any) -> Dict[str, torch.Generator]:
    """Those of :data:`LOADER_GENERATORS` that ``train_data`` has (a loader without packing has no packing one)."""
    found = {name: getattr(train_data, name, None) for name in LOADER_GENERATORS}
    return {name: generator for name, generator in found.items() if isinstance(generator, torch.Generator)}
