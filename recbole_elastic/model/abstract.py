"""What the plugin's sequential models share with SASRec: input embedding, initialisation, scoring and losses."""

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from recbole_elastic.model.sampled_softmax import SAMPLED_SOFTMAX, SampledSoftmax


def inference(method: Callable) -> Callable:
    """Run a module's ``method`` as inference whatever mode the module is in: eval mode (no dropout, normalisation
    on running statistics) and no gradient; the module's mode is restored afterwards. For the streaming methods,
    which serve, never train."""

    @functools.wraps(method)
    def in_eval_mode(module: nn.Module, *args, **kwargs):
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                return method(module, *args, **kwargs)
        finally:
            module.train(was_training)

    return in_eval_mode


class DotProductSequentialRecommender(SequentialRecommender):
    """A sequential recommender that encodes a sequence into one vector and scores items by dot product, as SASRec.

    It reads ``hidden_size``, ``hidden_dropout_prob``, ``layer_norm_eps``, ``initializer_range`` and ``loss_type``
    (validated by the subclass before calling this ``__init__``), builds the item embedding (padding 0), the learned
    position embedding, input LayerNorm and dropout, and provides ``calculate_loss`` (CE over all items, BPR with
    RecBole's negative samples, or the sampled softmax of :mod:`recbole_elastic.model.sampled_softmax`, which also
    reads ``sampled_negatives``, ``in_batch_negatives`` and ``logq_correction``), ``predict`` and
    ``full_sort_predict``. Subclasses implement ``forward``.

    ``score_temperature`` chooses the score of an item: unset, the dot product of the output and the item's
    embedding (SASRec's); a number tau, their cosine similarity divided by tau (both vectors L2-normalised, as the
    SASRec baseline of Zhai et al. 2024, "Actions Speak Louder than Words", tau = 0.05 on ml-1m). Every score goes
    through :meth:`score_queries` and :meth:`item_vectors`, so a score is always ``query . item vector``.
    """

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]  # same as embedding_size
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]
        self.score_temperature = config["score_temperature"]  # None (a checkpoint saved before the key): dot product

        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.loss_fct = BPRLoss() if self.loss_type == "BPR" else nn.CrossEntropyLoss()
        if self.loss_type == SAMPLED_SOFTMAX:
            self.sampled_softmax = SampledSoftmax(
                self.n_items,
                dataset.inter_feat[self.ITEM_ID],  # the training targets: the in-batch negatives' distribution
                n_uniform=config["sampled_negatives"],
                in_batch=config["in_batch_negatives"],
                logq_correction=config["logq_correction"],
            )

    def _init_weights(self, module: nn.Module) -> None:
        """Initialize the weights as SASRec."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    def embed_input(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Item + position embeddings, LayerNorm, dropout: ``[B, N]`` -> ``[B, N, H]``."""
        return self.embed_at(item_seq, torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device))

    def embed_at(self, item_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``item_ids`` at ``positions`` (broadcast against them: ``[N]`` for ``[B, N]`` items,
        ``[B]`` for one event per user). Positions past the position table (a causal model reading a longer
        history, its padded last chunk, streaming) reuse its last embedding."""
        positions = positions.clamp(max=self.max_seq_length - 1)
        return self.dropout(self.LayerNorm(self.item_embedding(item_ids) + self.position_embedding(positions)))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_queries(self, seq_output: torch.Tensor) -> torch.Tensor:
        """The vectors ``[..., H]`` whose dot products with :meth:`item_vectors` are the scores: the outputs
        themselves, or with ``score_temperature`` the outputs L2-normalised and divided by it."""
        if self.score_temperature is None:
            return seq_output
        return F.normalize(seq_output, dim=-1) / self.score_temperature

    def item_vectors(self, items: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The item side of the scores: the embeddings of ``items`` (every item, ``[n_items, H]``, when None),
        L2-normalised with ``score_temperature``. Padding's row stays zero."""
        vectors = self.item_embedding.weight if items is None else self.item_embedding(items)
        return vectors if self.score_temperature is None else F.normalize(vectors, dim=-1)

    def score_all_items(self, seq_output: torch.Tensor) -> torch.Tensor:
        """Scores of every item ``[B, n_items]`` for outputs ``[B, H]``."""
        return torch.matmul(self.score_queries(seq_output), self.item_vectors().transpose(0, 1))

    def calculate_loss(self, interaction) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        neg_items = interaction[self.NEG_ITEM_ID] if self.loss_type == "BPR" else None
        return self.output_loss(seq_output, interaction[self.POS_ITEM_ID], neg_items)

    def output_loss(
        self, seq_output: torch.Tensor, pos_items: torch.Tensor, neg_items: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The loss of outputs ``[M, H]`` for targets ``pos_items`` ``[M]`` (and, for BPR, ``neg_items`` ``[M]``)."""
        if self.loss_type == "BPR":
            query = self.score_queries(seq_output)
            pos_score = torch.sum(query * self.item_vectors(pos_items), dim=-1)  # [M]
            neg_score = torch.sum(query * self.item_vectors(neg_items), dim=-1)  # [M]
            return self.loss_fct(pos_score, neg_score)
        if self.loss_type == SAMPLED_SOFTMAX:
            return self.sampled_softmax(self.score_queries(seq_output), pos_items, self.item_vectors)
        return self.loss_fct(self.score_all_items(seq_output), pos_items)  # logits [M n_items]

    def predict(self, interaction) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward(item_seq, item_seq_len)
        return torch.sum(self.score_queries(seq_output) * self.item_vectors(interaction[self.ITEM_ID]), dim=-1)  # [B]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        return self.score_all_items(self.forward(item_seq, item_seq_len))  # [B n_items]
