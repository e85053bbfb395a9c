from recbole_elastic.model.elastic import ELASTIC
from recbole_elastic.model.linrec import LinRec

__all__ = ["ELASTIC", "LinRec"]
