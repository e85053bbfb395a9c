"""Keep RecBole 1.2.1 working on today's numpy and torch without editing its files.

Each shim is scoped to the smallest thing that needs it:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``. RecBole's
  ``Config.compatibility_settings`` reads the first three on every construction and ray 2.6.3 (imported by
  ``recbole.quick_start``) reads ``np.bool8``. We put the old names back as aliases of the same dtypes (numpy
  1.x already has them, so nothing changes there), then make the aliases RecBole's metrics use (``np.float``...)
  exactly as RecBole's own Config does.
* torch >= 2.6 loads with ``weights_only=True`` by default, but RecBole checkpoints pickle the whole Config.
  We do *not* flip the process-wide default: only RecBole's trainer (``recbole.trainer.trainer``: best-model
  loading and ``resume_checkpoint``) sees a ``torch`` whose ``load`` defaults to ``weights_only=False``. Every
  other ``torch.load`` in the process keeps torch's safe default. RecBole's ``load_data_and_model`` imports torch
  locally, so ``register()`` swaps it for the plugin's own (see ``registration``).

pandas 3 and setuptools >= 82 (``pkg_resources``, needed by ray) cannot be shimmed cleanly, so pyproject.toml pins
them (``pandas<3``, ``setuptools<82``).
"""

import types
from typing import Any

import numpy as np
import torch

_NUMPY_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
}


def restore_numpy_aliases() -> None:
    """Define the numpy names RecBole 1.2.1 and ray 2.6.3 still use, if this numpy removed them.

    Then run RecBole's own ``Config.compatibility_settings`` (``np.float = np.float_``, ...), which RecBole only
    runs when a Config is constructed: code paths that unpickle a Config from a checkpoint need it as well.
    """
    for old_name, current_name in _NUMPY_ALIASES.items():
        if old_name not in np.__dict__:
            setattr(np, old_name, getattr(np, current_name))
    from recbole.config import Config

    Config.compatibility_settings(None)


class _CheckpointTorch(types.ModuleType):
    """A view of the ``torch`` module whose ``load`` reads RecBole checkpoints (pickled Config included)."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        # RecBole writes these files itself (Trainer._save_checkpoint); they hold a pickled Config.
        kwargs.setdefault("weights_only", False)
        return torch.load(f, *args, **kwargs)


_CHECKPOINT_TORCH = _CheckpointTorch()


def patch_checkpoint_loading(module: types.ModuleType) -> None:
    """Make ``module``'s global ``torch`` the checkpoint-reading view (idempotent)."""
    if getattr(module, "torch", None) is torch:
        module.torch = _CHECKPOINT_TORCH


def load_checkpoint(path: str, map_location: Any = None) -> dict:
    """Read a RecBole checkpoint file (a dict holding the pickled Config and the state dicts)."""
    apply()  # the Config it unpickles is used with RecBole's numpy aliases
    return torch.load(path, map_location=map_location, weights_only=False)


def apply() -> None:
    """Install every shim (idempotent). Importing the package installs none: ``register()``, the CLI,
    ``ElasticConfig`` and checkpoint loading call this before RecBole needs it."""
    restore_numpy_aliases()
    import recbole.trainer.trainer as recbole_trainer

    patch_checkpoint_loading(recbole_trainer)
