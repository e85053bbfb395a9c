"""Errors the user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class ElasticError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(ElasticError, ValueError):
    """A configuration value is invalid; the message names the key and its allowed range."""


class UnknownModelError(ElasticError, ValueError):
    """The model name is neither a plugin model nor a RecBole built-in one."""


class DatasetNotFoundError(ElasticError, FileNotFoundError):
    """The dataset's atomic files are not on disk and could not be downloaded."""


class DatasetFormatError(ElasticError, ValueError):
    """An atomic file is malformed, or filtering left nothing to train on; the message names the file or keys."""


class TrainingDivergedError(ElasticError, RuntimeError):
    """The training loss became NaN; the message names the epoch and the last good checkpoint."""


class MissingDependencyError(ElasticError, ImportError):
    """An optional feature's packages are not installed; the message names the extra to install."""


class UnknownTokenError(ElasticError, KeyError):
    """A user or item token the model or the streaming state does not know; the message names it."""

    def __str__(self) -> str:  # KeyError's own str() would quote the whole message
        return str(self.args[0]) if self.args else ""
