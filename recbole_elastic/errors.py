"""Errors the user can act on. The CLI prints their message (no traceback) and exits with status 2."""


class ElasticError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(ElasticError, ValueError):
    """A configuration value is invalid; the message names the key and its allowed range."""


class UnknownModelError(ElasticError, ValueError):
    """The model name is neither a plugin model nor a RecBole built-in one."""


class DatasetNotFoundError(ElasticError, FileNotFoundError):
    """The dataset's atomic files are not on disk and could not be downloaded."""
