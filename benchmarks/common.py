"""What the training benchmarks share: one training step as RecBole's trainer takes it, and writing results."""

import json
import os
import time
from typing import Any


def training_step(trainer, interaction) -> float:
    """One training step of ``trainer``'s model on ``interaction`` (RecBole's: loss, backward, optimizer step),
    in the model's training mode; returns its wall time in seconds."""
    trainer.model.train()
    start = time.perf_counter()
    trainer.optimizer.zero_grad()
    trainer.model.calculate_loss(interaction).backward()
    trainer.optimizer.step()
    return time.perf_counter() - start


def write_results(out: str, records: Any, markdown: str = None) -> None:
    """``out/results.json`` (and ``out/results.md`` when given, also printed), each written atomically."""
    from recbole_elastic.atomic import atomic_write

    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, "results.json"), json.dumps(records, indent=2))
    if markdown is not None:
        atomic_write(os.path.join(out, "results.md"), markdown)
        print(markdown)
