"""recbole-elastic: ELASTIC (efficient linear attention for long-sequence recommendation) for RecBole.

Importing the package changes nothing in RecBole: ``register()``, the CLI and ``ElasticConfig`` apply the
compatibility shims and the config hook when they are used (see docs/ARCHITECTURE.md).
"""

from recbole_elastic.model import ELASTIC, LinRec
from recbole_elastic.registration import register

__version__ = "0.1.0"
__all__ = ["ELASTIC", "LinRec", "register", "__version__"]
