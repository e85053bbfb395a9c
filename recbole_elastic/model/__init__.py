from recbole_elastic.model.elastic import ELASTIC

__all__ = ["ELASTIC"]
