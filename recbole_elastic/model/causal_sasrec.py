"""
CausalSASRec
################################################

Reference:
    Wang-Cheng Kang et al. "Self-Attentive Sequential Recommendation." in ICDM 2018.

SASRec as RecBole builds it (RecBole's ``TransformerEncoder`` with its left-to-right attention mask, learned
position embedding, readout at ``item_seq_len - 1``; same parameter names, so a RecBole SASRec state dict loads
into it), which can also read every position: ``forward_all_positions`` returns the encoder's output at each
position, which the causal mask makes depend only on the items up to it. With ``train_all_positions`` it trains
on one window per sample with a loss at every position, as the original SASRec does, so a sweep can compare it
with CausalELASTIC under the same scheme. Without it, it is RecBole's SASRec.

With ``norm_first`` the layers are pre-LN instead (``layers.PreNormTransformerEncoder``: each sub-layer reads
LayerNorm of its input and adds to it, one LayerNorm after the last layer: Xiong et al. 2020, PyTorch's
``norm_first``). Its parameter names then differ from RecBole's SASRec.

Softmax self-attention builds a ``[B, heads, N, N]`` score tensor: this is the quadratic baseline.
"""

import torch

from recbole.model.layers import TransformerEncoder

from recbole_elastic.model.abstract import DotProductSequentialRecommender
from recbole_elastic.model.all_positions import AllPositionsMixin
from recbole_elastic.model.hyperparameters import HyperparameterChecker
from recbole_elastic.model.layers import PreNormTransformerEncoder


def check_hyperparameters(config) -> None:
    """Raise :class:`ConfigError` naming the first CausalSASRec hyperparameter outside its allowed range."""
    checker = HyperparameterChecker("CausalSASRec", config)
    checker.require_transformer()
    checker.require_bool("norm_first", optional=True)


class CausalSASRec(AllPositionsMixin, DotProductSequentialRecommender):
    r"""SASRec reading every position, for training with a loss at every position of a window."""

    def __init__(self, config, dataset):
        check_hyperparameters(config)
        super(CausalSASRec, self).__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]  # the dimensionality in feed-forward layer
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.norm_first = bool(config["norm_first"])  # None: a checkpoint saved before the key, post-LN

        # define layers
        encoder = PreNormTransformerEncoder if self.norm_first else TransformerEncoder
        self.trm_encoder = encoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

        # parameters initialization
        self.apply(self._init_weights)

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        input_emb = self.embed_input(item_seq)
        extended_attention_mask = self.get_attention_mask(item_seq)  # left-to-right, padding masked
        if self.norm_first:
            return self.trm_encoder(input_emb, extended_attention_mask)  # [B N H]
        trm_output = self.trm_encoder(input_emb, extended_attention_mask, output_all_encoded_layers=True)
        return trm_output[-1]  # [B N H]
