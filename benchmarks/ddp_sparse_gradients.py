"""Does DistributedDataParallel all-reduce the interest memory's sparse gradients on gloo (CPU)? Two processes.

    python benchmarks/ddp_sparse_gradients.py

Not RecBole's trainer: a ``ProductKeyInterestMemory(sparse=True)`` (no BatchNorm, so per-rank batches and one big
batch compute the same thing) and a linear head, trained the way RecBole's ``Trainer._train_epoch`` does it under
DDP: ``set_reduce_hook`` (a DDP forward of a dummy input), the loss from the plain module plus a sync loss,
backward, optimizer step. Checks, on each rank:

1. plain DDP: the table's gradient stays sparse and equals the mean of the ranks' own gradients;
2. RecBole's own ``sync_grad_loss`` (``sum(p) * 0`` over *all* parameters) with a sparse table;
3. ``recbole_elastic.optim.sync_grad_loss`` + ``build_optimizer`` for a few steps: ranks stay identical and equal
   one process training on the union of the ranks' batches (the loss is a mean, so DDP's average is its gradient);
4. the same after ``prepare_sparse_gradients_for_ddp(model, "nccl")`` (dense table), still on gloo: NCCL itself
   needs GPUs and is not tested here.
"""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORLD = 2
BATCH = 8  # per rank
HIDDEN = 8


class Tiny(nn.Module):
    def __init__(self) -> None:
        from recbole_elastic.model.layers import ProductKeyInterestMemory

        super().__init__()
        torch.manual_seed(0)  # the same initial weights on every rank
        self.memory = ProductKeyInterestMemory(
            HIDDEN, 2, 16, 2, 8, query_norm="none", initializer_range=0.5, sparse=True
        )
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        tokens, _ = self.memory(summary)
        return self.head(tokens).pow(2).mean()


def batches(step: int) -> torch.Tensor:
    """Step ``step``'s inputs for all ranks together ``[WORLD * BATCH, HIDDEN]``; rank r takes rows r*BATCH.."""
    return torch.randn(WORLD * BATCH, HIDDEN, generator=torch.Generator().manual_seed(step))


def config():
    from recbole_elastic.standalone import StandInConfig

    return StandInConfig(learner="adam", learning_rate=0.05, weight_decay=0.0)


def set_reduce_hook(model: nn.Module, ddp: DistributedDataParallel) -> None:
    """RecBole's ``AbstractTrainer.set_reduce_hook``: a DDP forward (of a dummy input) arms the gradient hooks."""
    forward = model.forward
    model.forward = lambda x: x
    ddp(torch.LongTensor([0]))
    model.forward = forward


def report(rank: int, message: str) -> None:
    sys.stdout.write(f"rank {rank}: {message}\n")  # one write: lines of the two processes do not interleave
    sys.stdout.flush()


def check_plain_ddp(rank: int) -> None:
    summary = batches(0)[rank * BATCH : (rank + 1) * BATCH]
    reference = Tiny()
    reference(summary).backward()
    own = reference.memory.values.weight.grad.to_dense()
    gathered = [torch.zeros_like(own) for _ in range(WORLD)]
    dist.all_gather(gathered, own)
    model = Tiny()
    ddp = DistributedDataParallel(model)  # keep it alive until backward ends: its reducer does the all-reduce
    ddp(summary).backward()
    grad = model.memory.values.weight.grad
    report(
        rank,
        f"1. plain DDP: gradient layout {grad.layout}, rows {grad.coalesce().indices().shape[1]} "
        f"(own {own.abs().sum(1).gt(0).sum().item()}), equals the mean of the ranks' gradients: "
        f"{torch.allclose(grad.to_dense(), sum(gathered) / WORLD, atol=1e-7)}",
    )


def check_recbole_sync_loss(rank: int) -> None:
    model = Tiny()
    ddp = DistributedDataParallel(model)
    set_reduce_hook(model, ddp)
    loss = model(batches(0)[rank * BATCH : (rank + 1) * BATCH])
    recbole_sync_loss = sum(p.sum() * 0 for p in model.parameters())
    try:
        (loss + recbole_sync_loss).backward()
        report(rank, f"2. RecBole's sync_grad_loss: no error, gradient layout {model.memory.values.weight.grad.layout}")
    except RuntimeError as error:
        report(rank, f"2. RecBole's sync_grad_loss: RuntimeError: {str(error).splitlines()[0]}")


def check_training(rank: int, label: str, backend: str, steps: int = 5) -> None:
    """``backend`` is what ``prepare_sparse_gradients_for_ddp`` is told (the process group is gloo either way)."""
    from recbole_elastic.optim import build_optimizer, prepare_sparse_gradients_for_ddp, sync_grad_loss
    from recbole_elastic.process_group import parameter_digest

    model = Tiny()
    kept_sparse = prepare_sparse_gradients_for_ddp(model, backend)
    optimizer = build_optimizer(config(), model)
    ddp = DistributedDataParallel(model)
    reference = Tiny()  # one process, the union of the ranks' batches, the same optimizer
    prepare_sparse_gradients_for_ddp(reference, backend)
    reference_optimizer = build_optimizer(config(), reference)
    for step in range(steps):
        everything = batches(step)
        optimizer.zero_grad()
        set_reduce_hook(model, ddp)
        (model(everything[rank * BATCH : (rank + 1) * BATCH]) + sync_grad_loss(model)).backward()
        optimizer.step()
        reference_optimizer.zero_grad()
        reference(everything).backward()
        reference_optimizer.step()
    digests = [None] * WORLD
    dist.all_gather_object(digests, parameter_digest(model))
    gap = max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference.parameters()))
    report(
        rank,
        f"{label} prepared for {backend}, {steps} steps with optim.sync_grad_loss + build_optimizer "
        f"({type(optimizer).__name__}, "
        f"table sparse: {kept_sparse}): ranks identical: {len(set(digests)) == 1}, "
        f"largest gap to one-process training on all batches: {gap:.1e}",
    )


def main(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        check_plain_ddp(rank)
        check_recbole_sync_loss(rank)
        check_training(rank, "3.", "gloo")
        check_training(rank, "4.", "nccl")  # the dense fallback NCCL gets, run on gloo
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    print(f"torch {torch.__version__}, backend gloo, {WORLD} processes on CPU", flush=True)
    mp.spawn(main, args=(29533,), nprocs=WORLD, join=True)
