"""
CausalLinRec
################################################

Reference:
    Langming Liu et al. "LinRec: Linear Attention Mechanism for Long-term Sequential Recommender Systems."
    in SIGIR 2023.

LinRec (``linrec.py``) with a causal mask, so that it can train on every position of a window
(``train_all_positions``) as CausalSASRec and CausalELASTIC do. LinRec's attention keeps its formula: per head,
``Q_hat = rownorm(elu(Q))``, ``K_hat = rownorm(elu(K))``, and position t reads

    out_t = Q_hat_t (sum_{j <= t} K_hat_j^T V_j) / sqrt(d)

i.e. LinRec's ``K_hat^T V`` summed over the prefix only. The normalisation is per token (over the head dimension),
not over the sequence, so nothing in the formula depends on later positions and the causal form is exact, still
O(N d^2): computed in chunks of ``causal_chunk_size`` positions with a carried ``[d, d]`` sum
(:func:`~recbole_elastic.model.layers.causal_linear_attention`). Everything else is LinRec's: embeddings,
post-LN layers with RecBole's ``FeedForward``, readout at ``item_seq_len - 1``, losses and scoring.

How it differs from LinRec: LinRec has no causal mask, so with two or more layers a position's first-layer output
reads the items after it (on a prefix sample all of them are before the target, so nothing leaks, but position t
is not a function of items <= t). CausalLinRec's one-layer output on a prefix equals LinRec's; with more layers it
is a different model, as SASRec's causal mask makes it (RecBole's SASRec is causal). Padding follows the real
items, so the causal mask alone keeps it away from every real position; padded keys are zeroed all the same.
"""

import torch

from recbole_elastic.model.all_positions import AllPositionsMixin
from recbole_elastic.model.hyperparameters import HyperparameterChecker
from recbole_elastic.model.layers import LinRecEncoder
from recbole_elastic.model.linrec import LinRec


class CausalLinRec(AllPositionsMixin, LinRec):
    r"""LinRec whose output at every position depends only on the items up to it, at O(N d^2) cost."""

    def make_encoder(self, config) -> LinRecEncoder:
        checker = HyperparameterChecker("CausalLinRec", config)
        checker.require("causal_chunk_size", checker.is_int("causal_chunk_size", 1), "an integer >= 1")
        return LinRecEncoder(**self.encoder_arguments(), causal_chunk_size=config["causal_chunk_size"])

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        return self.trm_encoder(self.embed_input(item_seq), item_seq != 0)  # [B N H]
