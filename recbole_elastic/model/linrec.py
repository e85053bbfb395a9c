"""
LinRec
################################################

Reference:
    Langming Liu et al. "LinRec: Linear Attention Mechanism for Long-term Sequential Recommender Systems."
    in SIGIR 2023.

LinRec is SASRec with its softmax self-attention replaced by an L2-normalised linear attention; everything else
(item + learned position embedding, LayerNorm, dropout, ``n_layers`` post-LN Transformer layers with RecBole's
``FeedForward``, readout at ``item_seq_len - 1``, CE/BPR losses, scoring) is SASRec's. Per head::

    Q_hat = rownorm(elu(Q)),  K_hat = rownorm(elu(K)),  out = Q_hat (K_hat^T V) / sqrt(d_head)

with plain ELU (not ELU + 1), ``rownorm`` dividing each token's row by its L2 norm over the head dimension, and
``K_hat^T V`` computed first: O(N d^2) time and memory, no N x N tensor, no softmax
(:class:`~recbole_elastic.model.layers.LinRecAttention`).

Where we differ from the authors' code (a patched RecBole ``MultiHeadAttention``), and why:

* Padding. Their code lets padded positions into ``K_hat^T V``, so a user's scores depend on how much padding
  the batch has (the padded positions carry the position embedding, so their keys are not zero). By default we
  zero the ``K_hat`` rows of padded positions: scores no longer depend on the padded width.
  ``include_padding: True`` restores the authors' behaviour.
* L2 norm. Their code divides by the norm with no epsilon, so an all-zero row gives NaN; we clamp the norm below at
  1e-12, which changes nothing for any other row.

As in their code there is no causal mask: under RecBole's sequential data augmentation each sample holds only the
items before its target, so nothing leaks. ``attn_dropout_prob`` is accepted (SASRec configs set it) but unused,
as in their code: there is no attention matrix to drop from.
"""

import torch

from recbole_elastic.model.abstract import DotProductSequentialRecommender
from recbole_elastic.model.hyperparameters import HyperparameterChecker
from recbole_elastic.model.layers import LinRecEncoder


def check_hyperparameters(config, model_name: str = "LinRec") -> None:
    """Raise :class:`ConfigError` naming the first transformer hyperparameter of ``model_name`` (LinRec or a
    subclass) outside its allowed range; each class's ``make_encoder`` checks its own keys."""
    HyperparameterChecker(model_name, config).require_transformer()


class LinRec(DotProductSequentialRecommender):
    r"""LinRec: SASRec with L2-normalised linear attention, O(N) in the sequence length.

    See the module docstring for the attention and where we depart from the authors' code.
    """

    def __init__(self, config, dataset):
        check_hyperparameters(config, type(self).__name__)
        super(LinRec, self).__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]  # the dimensionality in feed-forward layer
        self.attn_dropout_prob = config["attn_dropout_prob"]  # unused, see the module docstring
        self.hidden_act = config["hidden_act"]

        # define layers
        self.trm_encoder = self.make_encoder(config)

        # parameters initialization
        self.apply(self._init_weights)

    def make_encoder(self, config) -> LinRecEncoder:
        """LinRec's encoder, with no causal mask; reads the key of its padding choice, ``include_padding``."""
        HyperparameterChecker("LinRec", config).require_bool("include_padding")
        self.include_padding = config["include_padding"]
        return LinRecEncoder(**self.encoder_arguments())

    def encoder_arguments(self) -> dict:
        return dict(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        key_mask = None if self.include_padding else item_seq != 0
        output = self.trm_encoder(self.embed_input(item_seq), key_mask)
        return self.gather_indexes(output, item_seq_len - 1)  # [B H]
