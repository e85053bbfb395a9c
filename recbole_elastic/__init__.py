"""recbole-elastic: ELASTIC (efficient linear attention for long-sequence recommendation) for RecBole."""

from recbole_elastic import compat

compat.apply()

from recbole_elastic.model import ELASTIC, LinRec  # noqa: E402  (after the shims RecBole needs on today's stack)
from recbole_elastic.registration import register  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ELASTIC", "LinRec", "register", "__version__"]
