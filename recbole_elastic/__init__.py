"""recbole-elastic: ELASTIC (efficient linear attention for long-sequence recommendation) for RecBole."""

from recbole_elastic import compat

compat.apply()

from recbole_elastic.model import ELASTIC  # noqa: E402  (after the shims RecBole needs on today's stack)

__version__ = "0.1.0"
__all__ = ["ELASTIC", "__version__"]
