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

* ``torch.nn.utils.clip_grad_norm_`` raises on sparse gradients (ELASTIC's interest memory with
  ``memory_sparse_updates``); RecBole's trainer module sees ``recbole_elastic.optim.clip_grad_norm_`` instead, which
  gives the same result for dense gradients and accepts sparse ones.
* hyperopt >= 0.2.7 samples with ``rng.integers`` (numpy's Generator API), but RecBole's exhaustive search
  (``recbole.trainer.hyper_tuning.exhaustive_search``) hands it a ``np.random.RandomState``, which has no
  ``integers``. That module alone sees a numpy whose ``random.RandomState`` adds it (same stream as ``randint``).
* ray 2.6.3, which ``recbole.quick_start`` imports only to call ``tune.report`` (a no-op outside a Ray Tune
  session), has no wheels for Python 3.12+, where the plugin installs RecBole without it. There, a stand-in
  ``ray`` module keeps ``recbole.quick_start`` importable: its ``tune.report`` does nothing, as ray's does outside
  a Tune session, and anything else names the missing package.

pandas 3 and setuptools >= 82 (``pkg_resources``, needed by ray) cannot be shimmed cleanly, so pyproject.toml pins
them (``pandas<3``, ``setuptools<82``).
"""

import importlib.util
import sys
import types
from typing import Any

import numpy as np
import torch

from recbole_elastic.optim import clip_grad_norm_ as sparse_aware_clip_grad_norm_

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


class _ModuleView(types.ModuleType):
    """A module that reads as ``base``, except for the attributes given."""

    def __init__(self, base: types.ModuleType, **replaced: Any) -> None:
        super().__init__(base.__name__)
        self._base = base
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def _load_recbole_checkpoint(f: Any, *args: Any, **kwargs: Any) -> Any:
    # RecBole writes these files itself (Trainer._save_checkpoint); they hold a pickled Config.
    kwargs.setdefault("weights_only", False)
    return torch.load(f, *args, **kwargs)


def patch_checkpoint_loading(module: types.ModuleType) -> None:
    """Make ``module``'s global ``torch`` a view whose ``load`` reads RecBole checkpoints (idempotent)."""
    if getattr(module, "torch", None) is torch:
        module.torch = _ModuleView(torch, load=_load_recbole_checkpoint)


def load_checkpoint(path: str, map_location: Any = None) -> dict:
    """Read a RecBole checkpoint file (a dict holding the pickled Config and the state dicts)."""
    apply()  # the Config it unpickles is used with RecBole's numpy aliases
    return torch.load(path, map_location=map_location, weights_only=False)


class _IntegersRandomState(np.random.RandomState):
    """``RandomState`` with ``Generator.integers`` (what hyperopt >= 0.2.7 calls), drawn with ``randint``."""

    def integers(self, low: Any, high: Any = None, size: Any = None, dtype: Any = np.int64, endpoint: bool = False):
        if high is None:
            low, high = 0, low
        return self.randint(low, high + 1 if endpoint else high, size=size, dtype=dtype)


def patch_exhaustive_search(module: types.ModuleType) -> None:
    """Give ``module`` (RecBole's hyper_tuning) a numpy whose RandomState has ``integers`` (idempotent)."""
    if getattr(module, "np", None) is np:
        module.np = _ModuleView(np, random=_ModuleView(np.random, RandomState=_IntegersRandomState))


class _RayStandIn(types.ModuleType):
    """``ray`` (and ``ray.tune``) where ray is not installed; see the module docstring."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # the import system probes __path__, __spec__, ...
            raise AttributeError(name)
        raise ImportError(
            f"ray is not installed, so {self.__name__}.{name} is unavailable (RecBole 1.2.1 needs ray<=2.6.3, "
            "which has wheels for Python <= 3.11 only). On Python 3.11: pip install 'ray>=1.13,<=2.6.3'."
        )


def provide_ray_stand_in() -> None:
    """Put a stand-in ``ray`` in ``sys.modules`` when ray is not installed (idempotent)."""
    try:
        if "ray" in sys.modules or importlib.util.find_spec("ray") is not None:
            return
    except ImportError:  # a finder that refuses ray outright
        pass
    ray, tune = _RayStandIn("ray"), _RayStandIn("ray.tune")
    tune.report = lambda *args, **kwargs: None  # outside a Ray Tune session ray's report does nothing either
    ray.tune = tune
    sys.modules.update({"ray": ray, "ray.tune": tune})


def apply() -> None:
    """Install every shim (idempotent). Importing the package installs none: ``register()``, the CLI,
    ``ElasticConfig`` and checkpoint loading call this before RecBole needs it."""
    restore_numpy_aliases()
    provide_ray_stand_in()
    import recbole.trainer.hyper_tuning as recbole_hyper_tuning
    import recbole.trainer.trainer as recbole_trainer

    patch_checkpoint_loading(recbole_trainer)
    patch_exhaustive_search(recbole_hyper_tuning)
    recbole_trainer.clip_grad_norm_ = sparse_aware_clip_grad_norm_
