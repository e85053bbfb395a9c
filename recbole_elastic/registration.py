"""Make RecBole's own entry points find the plugin's models by name: ``recbole_elastic.register()``.

RecBole 1.2.1 has no model registry: ``recbole.utils.get_model(name)`` imports
``recbole.model.<family>.<name.lower()>`` and reads the class from it, and ``Config`` reads model defaults only
from RecBole's own ``properties/model/<name>.yaml``. ``register()`` therefore

1. places each plugin model's module in ``sys.modules`` under ``recbole.model.sequential_recommender.<name>``
   (``importlib`` returns a module already in ``sys.modules``, so every ``get_model`` call site finds it:
   ``run_recbole``, ``objective_function`` / ``HyperTuning``, ``load_data_and_model``, ``Config(model=name)``);
2. wraps ``Config._update_internal_config_dict`` so the plugin's model YAML is read exactly where a built-in
   model's is (after ``overall.yaml``, before ``sample.yaml``), and its dataset YAMLs after ``sample.yaml``;
3. replaces ``recbole.quick_start.load_data_and_model``, whose ``torch.load`` (a local import, so it cannot be
   redirected) fails on torch >= 2.6, with :func:`recbole_elastic.quick_start.load_data_and_model` (same
   arguments and return value), and gives ray 2.6.3 the ``np.bool8`` it needs under numpy 2 (``compat.apply``).
   Import ``load_data_and_model`` from ``recbole.quick_start`` after ``register()``.
4. makes the plugin's trainer for row-sparse gradient tables (``trainer.SparseAwareTrainer``) RecBole's
   ``<Model>Trainer`` for each plugin model, which ``recbole.utils.get_trainer`` picks by name.

Built-in models are untouched: their module names and YAMLs are not shadowed. Registration lives in the process
that calls it: RecBole's multi-process runs (``torch.multiprocessing.spawn``) re-import the main script in each
child, so call ``register()`` at the top level of that script, not under ``if __name__ == "__main__":``.
"""

import sys
import warnings

import recbole.trainer
from recbole.config import Config

from recbole_elastic import compat
from recbole_elastic.config import update_internal_config_dict
from recbole_elastic.quick_start import load_data_and_model
from recbole_elastic.trainer import SparseAwareTrainer
from recbole_elastic.utils import plugin_models

RECBOLE_SEQUENTIAL = "recbole.model.sequential_recommender"


def register() -> None:
    """Register the plugin's models with RecBole (idempotent). See the module docstring."""
    compat.apply()
    for name, model_class in plugin_models().items():
        sys.modules.setdefault(f"{RECBOLE_SEQUENTIAL}.{name.lower()}", sys.modules[model_class.__module__])
    Config._update_internal_config_dict = update_internal_config_dict
    for name in plugin_models():  # RecBole's get_trainer uses recbole.trainer.<Model>Trainer when it exists
        setattr(recbole.trainer, f"{name}Trainer", SparseAwareTrainer)
    try:
        import recbole.quick_start as recbole_quick_start_package
        import recbole.quick_start.quick_start as recbole_quick_start
    except ImportError as error:  # ray missing or broken: get_model and Config still work
        warnings.warn(f"recbole.quick_start could not be imported ({error}); only get_model and Config are registered")
        return
    recbole_quick_start.load_data_and_model = load_data_and_model
    recbole_quick_start_package.load_data_and_model = load_data_and_model
