"""Hyperparameter validation shared by the plugin's models.

Each model's ``check_hyperparameters`` builds a :class:`HyperparameterChecker` and lists its rules; the first
violated rule raises :class:`~recbole_elastic.errors.ConfigError` naming the model, the key, its value and the
allowed range.
"""

from typing import Iterable

from recbole_elastic.errors import ConfigError
from recbole_elastic.model.sampled_softmax import SAMPLED_SOFTMAX

# The activations RecBole's ``FeedForward`` accepts.
HIDDEN_ACTIVATIONS = ("gelu", "relu", "swish", "tanh", "sigmoid")
LOSS_TYPES = ("CE", "BPR", SAMPLED_SOFTMAX)


class HyperparameterChecker:
    """Checks the hyperparameters of ``model_name`` in ``config`` (anything indexable by key)."""

    def __init__(self, model_name: str, config) -> None:
        self.model_name = model_name
        self.config = config

    def require(self, key: str, valid: bool, allowed: str) -> None:
        """Raise :class:`ConfigError` for ``key`` unless ``valid``; ``allowed`` completes "it must be ..."."""
        if not valid:
            raise ConfigError(
                f"{self.model_name} hyperparameter `{key}` = {self.config[key]!r} is invalid: it must be {allowed}. "
                f"Set it in your config file or on the command line (--{key}=...)."
            )

    def is_int(self, key: str, minimum: int) -> bool:
        value = self.config[key]
        return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

    def is_probability(self, key: str) -> bool:
        value = self.config[key]
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1

    def require_bool(self, key: str, optional: bool = False) -> None:
        """``key`` is True or False; with ``optional`` it may be unset too (a checkpoint saved before the key)."""
        value = self.config[key]
        self.require(key, isinstance(value, bool) or (optional and value is None), "True or False")

    def require_transformer(self, extra_int_keys: Iterable[str] = ()) -> None:
        """The SASRec-style keys: sizes, heads, dropouts, FFN activation and loss.

        ``extra_int_keys`` are further integers >= 1, checked together with the sizes.
        """
        for key in ("n_layers", "n_heads", "hidden_size", "inner_size", *extra_int_keys):
            self.require(key, self.is_int(key, 1), "an integer >= 1")
        n_heads = self.config["n_heads"]
        self.require("hidden_size", self.config["hidden_size"] % n_heads == 0, f"divisible by n_heads={n_heads}")
        for key in ("hidden_dropout_prob", "attn_dropout_prob"):
            self.require(key, self.is_probability(key), "a number in [0, 1)")
        activations = list(HIDDEN_ACTIVATIONS)
        self.require("hidden_act", self.config["hidden_act"] in activations, f"one of {activations}")
        self.require_loss()
        temperature = self.config["score_temperature"]
        positive = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > 0
        self.require("score_temperature", temperature is None or positive, "~ (dot product) or a number > 0")

    def require_loss(self) -> None:
        """``loss_type``, and for the sampled softmax its negatives (at least one source) and correction."""
        self.require("loss_type", self.config["loss_type"] in LOSS_TYPES, f"one of {list(LOSS_TYPES)}")
        if self.config["loss_type"] != SAMPLED_SOFTMAX:
            return
        self.require_bool("in_batch_negatives")
        self.require_bool("logq_correction")
        minimum = 0 if self.config["in_batch_negatives"] else 1
        allowed = "an integer >= 0" if minimum == 0 else "an integer >= 1 when in_batch_negatives is False"
        self.require("sampled_negatives", self.is_int("sampled_negatives", minimum), allowed)
