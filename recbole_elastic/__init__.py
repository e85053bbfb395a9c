"""recbole-elastic: ELASTIC (efficient linear attention for long-sequence recommendation) for RecBole.

Importing the package changes nothing in RecBole: ``register()``, the CLI and ``ElasticConfig`` apply the
compatibility shims and the config hook when they are used (see docs/ARCHITECTURE.md).
"""

try:
    import recbole  # noqa: F401
except ImportError as error:  # on Python 3.12+ pip cannot install RecBole 1.2.1 with its requirements (ray)
    raise ImportError(
        "RecBole 1.2.1 is not installed. Install it as README.md says: pip install --no-deps recbole==1.2.1, then "
        "pip install recbole-elastic (or: pip install . in this repository)."
    ) from error

from recbole_elastic.model import ELASTIC, LinRec  # noqa: E402
from recbole_elastic.recommendations import recommend, recommend_for_histories  # noqa: E402
from recbole_elastic.registration import register  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ELASTIC", "LinRec", "recommend", "recommend_for_histories", "register", "__version__"]
