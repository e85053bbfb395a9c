from recbole_elastic.model.causal_elastic import CausalELASTIC
from recbole_elastic.model.causal_linrec import CausalLinRec
from recbole_elastic.model.causal_sasrec import CausalSASRec
from recbole_elastic.model.chunked_elastic import ChunkedELASTIC
from recbole_elastic.model.elastic import ELASTIC
from recbole_elastic.model.linrec import LinRec

__all__ = ["ELASTIC", "LinRec", "CausalELASTIC", "CausalSASRec", "CausalLinRec", "ChunkedELASTIC"]
