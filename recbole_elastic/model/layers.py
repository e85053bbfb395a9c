"""Reusable layers of ELASTIC: linear dispatcher attention and the product-key interest memory.

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression." arXiv 2408.09380.
    Guillaume Lample et al. "Large Memory Layers with Product Keys." NeurIPS 2019.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.layers import FeedForward


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries`` over a separate ``context``, with residual, dropout and LayerNorm.

    Post-LN as RecBole's ``MultiHeadAttention`` (SASRec). Attention runs through
    ``torch.nn.functional.scaled_dot_product_attention``; padding is a ``[B, 1, 1, N_context]`` boolean mask, so no
    query-by-context mask is ever materialised.
    """

    def __init__(
        self, hidden_size: int, n_heads: int, hidden_dropout_prob: float, attn_dropout_prob: float, layer_norm_eps: float
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout_prob = attn_dropout_prob
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, self.n_heads, self.head_size).transpose(1, 2)

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """queries ``[B, Q, H]`` attend to context ``[B, C, H]``; ``context_mask`` ``[B, C]`` is True where valid."""
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            self._split_heads(self.query(queries)),
            self._split_heads(self.key(context)),
            self._split_heads(self.value(context)),
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout_prob if self.training else 0.0,
        )
        attended = attended.transpose(1, 2).reshape(queries.shape)
        return self.LayerNorm(queries + self.out_dropout(self.dense(attended)))


class LinearDispatcherBlock(nn.Module):
    """One Linear Dispatcher Attention (LDA) block: aggregate, then dispatch. O(N * k) time and memory.

    * aggregate: the k interest tokens attend to the N-item sequence (padding masked), then a position-wise FFN;
    * dispatch: every sequence position attends to the k updated interest tokens, then a position-wise FFN.

    Each stage has its own projections, residual connections and LayerNorms (post-LN, as SASRec). When
    ``readout_index`` is given only those positions are dispatched: the last block of a model that reads one
    position out needs nothing else.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        attention_args = (hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        ffn_args = (hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
        self.aggregate = CrossAttention(*attention_args)
        self.aggregate_ffn = FeedForward(*ffn_args)
        self.dispatch = CrossAttention(*attention_args)
        self.dispatch_ffn = FeedForward(*ffn_args)

    def forward(
        self,
        sequence: torch.Tensor,
        interests: torch.Tensor,
        sequence_mask: torch.Tensor,
        readout_index: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return the updated sequence ``[B, N, H]`` (``[B, 1, H]`` with ``readout_index``) and interests ``[B, k, H]``."""
        interests = self.aggregate_ffn(self.aggregate(interests, sequence, sequence_mask))
        if readout_index is not None:
            sequence = sequence.gather(1, readout_index.view(-1, 1, 1).expand(-1, 1, sequence.size(-1)))
        sequence = self.dispatch_ffn(self.dispatch(sequence, interests))
        return sequence, interests


class ProductKeyInterestMemory(nn.Module):
    """Interest Memory Retrieval (IMR): a product-key memory of ``n_keys ** 2`` interest slots.

    There is one retrieval head per interest token. Head ``h`` turns the user summary into a query of size
    ``key_dim``, splits it into halves, scores each half against its own table of ``n_keys`` sub-keys, keeps the
    ``topk`` best per half, scores the ``topk * topk`` candidate sums and keeps the ``topk`` best slots. The slot
    values (shared by all heads) are summed with the softmax of their scores, so gradients reach both sub-keys and
    values. Retrieval costs O(heads * n_keys * key_dim + heads * topk^2): it grows with ``n_keys``, never with the
    number of slots ``n_keys ** 2``, which are never scored all at once.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_keys: int,
        topk: int,
        key_dim: int,
        query_batchnorm: bool,
        initializer_range: float,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_keys = n_keys
        self.topk = topk
        self.key_dim = key_dim
        self.query_net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, n_heads * key_dim)
        )
        # Lample et al.: normalising queries spreads them over the keys and keeps more slots in use.
        self.query_norm = nn.BatchNorm1d(n_heads * key_dim) if query_batchnorm else None
        half = key_dim // 2
        # [heads, 2 halves, n_keys, key_dim / 2]; unit-variance scores for a unit-variance query.
        self.sub_keys = nn.Parameter(torch.randn(n_heads, 2, n_keys, half) / math.sqrt(half))
        self.values = nn.EmbeddingBag(n_keys * n_keys, hidden_size, mode="sum")
        nn.init.normal_(self.values.weight, mean=0.0, std=initializer_range)

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys

    def make_query(self, summary: torch.Tensor) -> torch.Tensor:
        """Queries ``[B, heads, key_dim]`` from user summaries ``[B, H]``."""
        query = self.query_net(summary)
        if self.query_norm is not None:
            # A training batch of one (RecBole's FLOPs probe) has no batch statistics: use the running ones.
            use_batch_stats = self.training and query.size(0) > 1
            query = F.batch_norm(
                query,
                self.query_norm.running_mean,
                self.query_norm.running_var,
                self.query_norm.weight,
                self.query_norm.bias,
                training=use_batch_stats,
                momentum=self.query_norm.momentum,
                eps=self.query_norm.eps,
            )
        return query.view(-1, self.n_heads, self.key_dim)

    def retrieve(self, query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Top-``topk`` slot scores and slot indices ``[B, heads, topk]`` for queries ``[B, heads, key_dim]``."""
        half = self.key_dim // 2
        query_halves = query.view(query.size(0), self.n_heads, 2, half)
        # [B, heads, 2, n_keys]: each half against its own sub-key table.
        half_scores = torch.einsum("bhsd,hsnd->bhsn", query_halves, self.sub_keys)
        top_scores, top_keys = half_scores.topk(self.topk, dim=-1)  # [B, heads, 2, topk]
        candidate_scores = top_scores[:, :, 0, :, None] + top_scores[:, :, 1, None, :]  # [B, heads, topk, topk]
        candidate_slots = top_keys[:, :, 0, :, None] * self.n_keys + top_keys[:, :, 1, None, :]
        scores, best = candidate_scores.flatten(2).topk(self.topk, dim=-1)
        slots = candidate_slots.flatten(2).gather(-1, best)
        return scores, slots

    def forward(self, summary: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """One interest token per head ``[B, heads, H]`` and the retrieved slot indices ``[B, heads, topk]``."""
        scores, slots = self.retrieve(self.make_query(summary))
        weights = torch.softmax(scores, dim=-1)
        batch_size = summary.size(0)
        tokens = self.values(slots.view(-1, self.topk), per_sample_weights=weights.reshape(-1, self.topk))
        return tokens.view(batch_size, self.n_heads, -1), slots
