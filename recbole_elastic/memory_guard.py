"""Stop before the first batch when the output layer's logits cannot fit in memory.

Full CE scores every training target against every item: a ``[train_batch_size, n_items]`` float tensor. At the
peak of a training step three of them are alive (in the backward of the log-softmax: its saved output, the
gradient arriving from the loss and the gradient it returns). The sampled softmax scores each target against
``1 + negatives`` candidates and holds, at its peak (the forward's log-softmax), three float
``[targets, candidates]`` tensors (the masked negative logits, their concatenation with the positive's, the
log-softmax), the boolean accidental-hit mask ``[targets, negatives]`` (saved for the backward of ``masked_fill``)
and the negatives' embeddings ``[negatives, hidden_size]`` (saved for the backward of the product).
:func:`output_layer_bytes` counts all of these and adds :data:`MARGIN` for the step's small tensors and the
allocator's rounding. Measured in a fresh process on CPU (torch 2.13, glibc; ``tests/pipeline/test_memory_guard.py``):
CE adds 3.00 logit copies, the sampled softmax 3.33 (3.25 of them the three copies and the mask), both within
0.7% of the counted tensors. On amazon-books (155,749 items) at RecBole's batch of 2,048, CE needs about 3.7 GiB
for the output layer alone; without this check the run would fail with an out-of-memory error in the middle of
its first epoch.

:func:`check_output_memory` estimates that size for the run's ``loss_type`` and batch, compares it with the memory
the device has free (CUDA: ``torch.cuda.mem_get_info``; CPU: ``MemAvailable`` and the cgroup's limit), and raises
:class:`~recbole_elastic.errors.ConfigError` naming the loss and the batch size to change. ``output_memory_guard:
False`` turns it off. The plugin's trainers call it when training starts.
"""

import os
from typing import Optional

import torch

from recbole.utils import ModelType

from recbole_elastic.errors import ConfigError
from recbole_elastic.model.sampled_softmax import SAMPLED_SOFTMAX

LOGIT_COPIES = 3  # [targets, candidates] float tensors alive at the peak of a step (CE and the sampled softmax)
BYTES_PER_LOGIT = 4  # float32
BYTES_PER_MASK_ENTRY = 1  # torch.bool: the sampled softmax's accidental-hit mask [targets, negatives]
MARGIN = 1.05  # the step's small tensors ([targets, hidden] outputs and gradients, index vectors), page rounding


def batch_targets(config) -> int:
    """The most training targets one batch can hold: ``train_batch_size``, except with ``train_all_positions``.

    There a batch with ``train_batch_counts: slots`` holds ``max(train_batch_size // N, 1)`` windows of up to N =
    ``MAX_ITEM_LIST_LENGTH`` targets; a packed one (``targets``) averages at most ``max(train_batch_size, 2N)``
    real targets and exceeds its average by at most one window (``recbole_elastic.windows.pack_windows``).
    """
    batch = config["train_batch_size"]
    if not config["train_all_positions"]:
        return batch
    window = config["MAX_ITEM_LIST_LENGTH"]
    if config["train_batch_counts"] == "slots":
        return max(batch // window, 1) * window
    return max(batch, 2 * window) + window


def output_candidates(config, n_items: int, loss_type: Optional[str] = None) -> int:
    """How many items each training target is scored against, for ``loss_type`` (default: ``config``'s)."""
    loss_type = loss_type or config["loss_type"]
    if loss_type == SAMPLED_SOFTMAX:
        return 1 + config["sampled_negatives"] + (batch_targets(config) if config["in_batch_negatives"] else 0)
    if loss_type == "BPR":
        return 2
    return n_items


def output_layer_bytes(config, n_items: int) -> int:
    """Estimated peak bytes of the output layer in one training step (:func:`batch_targets` targets): every tensor
    alive at its peak for the run's ``loss_type`` (see the module docstring), times :data:`MARGIN`."""
    targets, candidates = batch_targets(config), output_candidates(config, n_items)
    counted = targets * candidates * BYTES_PER_LOGIT * LOGIT_COPIES
    if config["loss_type"] == SAMPLED_SOFTMAX:
        negatives = candidates - 1
        counted += targets * negatives * BYTES_PER_MASK_ENTRY  # the accidental-hit mask
        counted += negatives * config["hidden_size"] * BYTES_PER_LOGIT  # the negatives' embeddings
    return int(counted * MARGIN)


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for a new tensor on ``device``, or None when it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            fields = dict(line.split(":", 1) for line in f)
        free.append(int(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    free.append(_cgroup_headroom())
    known = [value for value in free if value is not None]
    return min(known) if known else None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> Optional[int]:
    """``memory.max - memory.current`` of this process's cgroup (v2), or None without a limit."""
    try:
        with open(os.path.join(root, "memory.max"), encoding="ascii") as f:
            limit = f.read().strip()
        with open(os.path.join(root, "memory.current"), encoding="ascii") as f:
            current = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - current


def check_output_memory(config, n_items: int, available: Optional[int] = None) -> None:
    """Raise :class:`ConfigError` when the output layer's estimated peak exceeds the free memory.

    Checks sequential models trained with CE (RecBole's or the plugin's) or the plugin's SampledSoftmax.
    ``available`` (bytes) defaults to :func:`available_bytes` of ``config["device"]``; nothing is checked when it
    is unknown, or when ``output_memory_guard`` is False.
    """
    if config["output_memory_guard"] is False or config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return
    if config["loss_type"] not in ("CE", SAMPLED_SOFTMAX):
        return
    available = available_bytes(config["device"]) if available is None else available
    needed = output_layer_bytes(config, n_items)
    if available is None or needed <= available:
        return
    batch = config["train_batch_size"]
    fitting_batch = 2 ** max(int(available // (needed // batch)).bit_length() - 1, 0)  # a power of two that fits
    smaller_batch = f"lower train_batch_size to {fitting_batch} or less"
    if config["loss_type"] == SAMPLED_SOFTMAX:
        advice = f"Lower sampled_negatives, or {smaller_batch}"
    elif config["sampled_negatives"] is not None:  # a plugin model: it has the sampled softmax
        candidates = output_candidates(config, n_items, loss_type=SAMPLED_SOFTMAX)
        advice = (
            f"Use loss_type=SampledSoftmax (each target scored against {candidates:,} items instead of "
            f"{n_items:,}; see recbole_elastic/model/sampled_softmax.py), or {smaller_batch}"
        )
    else:
        advice = smaller_batch[0].upper() + smaller_batch[1:]
    gib = 2**30
    raise ConfigError(
        f"loss_type={config['loss_type']} over {n_items:,} items at train_batch_size={batch} needs about "
        f"{needed / gib:.1f} GiB for the output layer's logits alone, but only {available / gib:.1f} GiB is free on "
        f"{config['device']}. {advice}. (output_memory_guard=False skips this check.)"
    )
