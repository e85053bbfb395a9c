"""Causal Linear Dispatcher Attention: every position has its own k interest states, built from its prefix only.

ELASTIC's aggregate stage lets the k interest tokens attend to the whole sequence. Making it causal naively (the
interests at position t attend to positions <= t, with queries that depend on t) costs an N x N score matrix per
interest. Here the aggregate queries do not depend on the position, so the attention of every prefix is a running
softmax: prefix sums of exp(score) and exp(score) * value, computed chunk by chunk with a carried running max
(:func:`prefix_softmax_attention`). Time and memory are O(N * k * (d + chunk_size)) per block.

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression." arXiv 2408.09380.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_elastic.model.layers import CrossAttention, FusedFeedForward


def prefix_softmax_attention(
    scores: torch.Tensor, values: torch.Tensor, chunk_size: int, value_keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Softmax attention of each query over every prefix of the sequence, without an N x N tensor.

    ``scores`` ``[B, heads, Q, N]`` are the scores of Q position-independent queries against the N keys (``-inf`` at
    padding; position 0 must be visible), ``values`` ``[B, heads, N, d]``. Returns ``[B, heads, Q, N, d]``::

        out[..., q, t, :] = sum_{s <= t} softmax(scores[..., q, :t + 1])_s * values[..., s, :]

    The sequence is read in chunks of ``chunk_size`` positions, as a flash-attention forward pass. Within a chunk,
    each position t has its exact causal softmax, shifted by the running max of the scores up to t (a
    ``[chunk, chunk]`` block per query). Across chunks, a carried state per query holds the running max, the sum of
    exp(score - max) and the sum of exp(score - max) * value of all earlier positions, rescaled when the max grows.
    Every exponent is <= 0 (no overflow) and each row's shift is one of its own scores (its sum is >= 1, so it never
    underflows to 0). The shifts are detached: softmax does not depend on them, so gradients are exact.

    ``value_keep`` ``[B, heads, Q, N]`` (attention dropout) scales each key's value term by 0 or 1 / (1 - p) and
    leaves the normaliser alone. The mask is drawn per key, not per (query position, key) pair as in softmax
    attention dropout: one mask per pair is an N x N tensor.
    """
    batch, heads, n_queries, length = scores.shape
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=scores.device).tril()
    carried_max = scores.new_full((batch, heads, n_queries, 1), float("-inf"))
    carried_sum = scores.new_zeros((batch, heads, n_queries, 1))
    carried_numerator = scores.new_zeros((batch, heads, n_queries, 1, values.size(-1)))
    outputs = []
    for start in range(0, length, chunk_size):
        chunk = scores[..., start : start + chunk_size]  # [B h Q c]
        size = chunk.size(-1)
        row_max = torch.maximum(chunk.detach().cummax(-1).values, carried_max)  # [B h Q c]: max over each prefix
        exponent = chunk.unsqueeze(-2) - row_max.unsqueeze(-1)  # [B h Q c(t) c(s)]
        # Masking before exp keeps exp's gradient at the masked (s > t) entries 0, never 0 * inf.
        weights = torch.where(causal[:size, :size], exponent, float("-inf")).exp()
        rescale = (carried_max - row_max).exp()  # [B h Q c]: the earlier chunks' sums, shifted to each row's max
        denominator = weights.sum(-1) + rescale * carried_sum  # [B h Q c]
        if value_keep is not None:
            weights = weights * value_keep[..., start : start + size].unsqueeze(-2)
        chunk_values = values[:, :, start : start + size].unsqueeze(2)  # [B h 1 c d]
        numerator = weights @ chunk_values + rescale.unsqueeze(-1) * carried_numerator  # [B h Q c d]
        outputs.append(numerator / denominator.unsqueeze(-1))
        carried_max, carried_sum, carried_numerator = row_max[..., -1:], denominator[..., -1:], numerator[..., -1:, :]
    return torch.cat(outputs, dim=-2)


class PrefixAggregation(CrossAttention):
    """The aggregate stage of causal LDA: k position-independent queries attend, at every position t, to the
    sequence up to t; the result is added to each position's own interest states (residual, post-LN as SASRec).

    With ``readout_index`` ([B]) only that position's interests are computed (an ordinary masked softmax over the
    positions up to it): the last block of a model that reads one position out needs nothing else.

    With ``n_recency_queries`` (``recency_bias``), each head's query q gets a learned recency slope ``lambda_q``:
    position t's softmax over the keys s <= t scores them ``q . k_s / sqrt(d) - lambda_q * (t - s)`` (ALiBi's
    linear bias, Press et al. 2022), so a query with a large slope reads the last few items and one with a slope
    near 0 the whole prefix. The ``- lambda_q * t`` term is the same for every key of position t, so softmax
    drops it: the score is ``q . k_s / sqrt(d) + lambda_q * s``, still position-independent, and the running
    softmax stays exact and linear. Slopes start geometric, ``2^0 .. 2^-(k-1)`` over the k queries (every head
    alike): horizons of about 1 to 2^(k-1) items.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        layer_norm_eps: float,
        chunk_size: int,
        n_recency_queries: Optional[int] = None,
    ) -> None:
        super().__init__(hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        self.chunk_size = chunk_size
        self.recency_slopes = None
        if n_recency_queries is not None:
            slopes = 2.0 ** -torch.arange(n_recency_queries, dtype=torch.float)
            self.recency_slopes = nn.Parameter(slopes.expand(n_heads, -1).clone())  # [h k]

    def recency_scores(self, positions: torch.Tensor) -> torch.Tensor:
        """``lambda_q * s`` for keys at ``positions`` ``[..., N]`` -> ``[..., h, k, N]`` (see the class docstring)."""
        positions = positions.to(self.recency_slopes.dtype).unsqueeze(-2).unsqueeze(-2)  # [... 1 1 N]
        return self.recency_slopes.unsqueeze(-1) * positions

    def forward(
        self,
        queries: torch.Tensor,
        interests: torch.Tensor,
        sequence: torch.Tensor,
        sequence_mask: torch.Tensor,
        readout_index: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """queries ``[k, H]``, interests ``[B, N, k, H]`` (``[B, k, H]`` with ``readout_index``), sequence
        ``[B, N, H]``, ``sequence_mask`` ``[B, N]`` True at real items -> updated interests, same shape."""
        batch, length, hidden = sequence.shape
        n_queries = queries.size(0)
        query = self.query(queries).view(1, n_queries, self.n_heads, self.head_size).transpose(1, 2)  # [1 h k d]
        key = self.split_heads(self.key(sequence))  # [B h N d]
        value = self.split_heads(self.value(sequence))
        scores = torch.matmul(query, key.transpose(-2, -1)) / math.sqrt(self.head_size)  # [B h k N]
        positions = torch.arange(length, device=sequence.device)
        if self.recency_slopes is not None:
            scores = scores + self.recency_scores(positions)
        visible = sequence_mask
        if readout_index is not None:
            visible = visible & (positions.unsqueeze(0) <= readout_index.unsqueeze(1))
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        value_keep = None
        if self.training and self.attn_dropout_prob > 0:
            value_keep = F.dropout(torch.ones_like(scores), self.attn_dropout_prob)
        if readout_index is None:
            attended = prefix_softmax_attention(scores, value, self.chunk_size, value_keep)  # [B h k N d]
            attended = attended.permute(0, 3, 2, 1, 4).reshape(batch, length, n_queries, hidden)
        else:
            weights = torch.softmax(scores, dim=-1)  # [B h k N]
            if value_keep is not None:
                weights = weights * value_keep
            attended = torch.matmul(weights, value).transpose(1, 2).reshape(batch, n_queries, hidden)
        return self.LayerNorm(interests + self.out_dropout(self.dense(attended)))

    def step(
        self,
        queries: torch.Tensor,
        interests: torch.Tensor,
        item: torch.Tensor,
        running: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        position: torch.Tensor,
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Streaming: fold one more position into the running softmax and return that position's interests.

        ``item`` ``[B, H]`` is the block's input at the new position ``position`` ``[B]`` (0-based: the recency
        bias needs it), ``interests`` ``[B, k, H]`` its interest states from the block before, ``running`` the
        prefix's (max ``[B, h, k, 1]``, sum of exp(score - max)
        ``[B, h, k, 1]``, sum of exp(score - max) * value ``[B, h, k, d]``). Returns the updated interests and the
        running state with the new position folded in: the same sums as :func:`prefix_softmax_attention`'s
        carried state, so the result equals ``forward`` at that position (inference: no dropout).
        """
        batch, hidden = item.shape
        n_queries = queries.size(0)
        query = self.query(queries).view(n_queries, self.n_heads, self.head_size).transpose(0, 1)  # [h k d]
        key = self.key(item).view(batch, self.n_heads, 1, self.head_size)  # [B h 1 d]
        value = self.value(item).view(batch, self.n_heads, 1, self.head_size)
        score = (query.unsqueeze(0) * key).sum(-1, keepdim=True) / math.sqrt(self.head_size)  # [B h k 1]
        if self.recency_slopes is not None:
            score = score + self.recency_scores(position.unsqueeze(-1))
        running_max, running_sum, numerator = running
        new_max = torch.maximum(running_max, score)
        decay = (running_max - new_max).exp()  # 0 before the first position (max -inf)
        weight = (score - new_max).exp()
        running_sum = running_sum * decay + weight
        numerator = numerator * decay + weight * value  # [B h k d]
        attended = (numerator / running_sum).transpose(1, 2).reshape(batch, n_queries, hidden)
        interests = self.LayerNorm(interests + self.out_dropout(self.dense(attended)))
        return interests, (new_max, running_sum, numerator)


class CausalDispatcherBlock(nn.Module):
    """One causal LDA block. Position t carries its own k interest states, which depend on positions <= t only:

    * aggregate (:class:`PrefixAggregation`): k learned, position-independent queries attend to the prefix up to t
      (each with a learned recency slope if ``recency_bias``); the result updates position t's interest states
      (residual, LayerNorm, then a position-wise FFN unless ``interest_ffn`` is False);
    * dispatch: position t attends to its own k interest states (as ELASTIC's dispatch), then a position-wise FFN.

    O(N * k * H) memory and O(N * k * (H * inner_size + H * chunk_size)) time: no N x N tensor.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_interests: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
        chunk_size: int,
        initializer_range: float,
        interest_ffn: bool = True,
        recency_bias: bool = False,
    ) -> None:
        super().__init__()
        ffn_args = (hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
        self.interest_queries = nn.Parameter(torch.empty(n_interests, hidden_size))
        nn.init.normal_(self.interest_queries, mean=0.0, std=initializer_range)
        self.aggregate = PrefixAggregation(
            hidden_size,
            n_heads,
            hidden_dropout_prob,
            attn_dropout_prob,
            layer_norm_eps,
            chunk_size,
            n_recency_queries=n_interests if recency_bias else None,
        )
        # The FFN on every position's k interest states is most of the block's work (k x a SASRec layer's FFN).
        self.aggregate_ffn = FusedFeedForward(*ffn_args) if interest_ffn else nn.Identity()
        self.dispatch = CrossAttention(hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        self.dispatch_ffn = FusedFeedForward(*ffn_args)

    def forward(
        self,
        sequence: torch.Tensor,
        interests: torch.Tensor,
        sequence_mask: torch.Tensor,
        readout_index: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """sequence ``[B, N, H]``, each position's interests ``[B, N, k, H]``, ``sequence_mask`` ``[B, N]`` -> the
        updated sequence and interests, zeros at padded positions (``[B, 1, H]`` and ``[B, k, H]``: the
        ``readout_index`` position only)."""
        batch, length, n_interests, hidden = interests.shape
        if readout_index is not None:
            interests = interests.gather(1, readout_index.view(-1, 1, 1, 1).expand(-1, 1, n_interests, hidden))
            interests = interests.squeeze(1)  # [B k H]
            interests = self.aggregate_ffn(
                self.aggregate(self.interest_queries, interests, sequence, sequence_mask, readout_index)
            )
            sequence = sequence.gather(1, readout_index.view(-1, 1, 1).expand(-1, 1, hidden))  # [B 1 H]
            return self.dispatch_ffn(self.dispatch(sequence, interests)), interests
        interests = self.aggregate(self.interest_queries, interests, sequence, sequence_mask)  # [B N k H]
        # The position-wise work (interest FFN, dispatch, FFN) runs on the M real positions only: windows of short
        # histories are mostly padding, and no real position reads a padded one (zeros here).
        real_interests = self.aggregate_ffn(interests[sequence_mask])  # [M k H]
        # Each position attends to its own k interests: a batch of M one-query attentions.
        dispatched = self.dispatch(sequence[sequence_mask].unsqueeze(1), real_interests)  # [M 1 H]
        output = sequence.new_zeros(batch, length, hidden)
        output[sequence_mask] = self.dispatch_ffn(dispatched.squeeze(1))
        interests = interests.new_zeros(interests.shape)
        interests[sequence_mask] = real_interests
        return output, interests

    def empty_running_state(self, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The aggregate's running softmax before any position: max -inf, sums 0 (see :meth:`step`)."""
        n_queries, hidden = self.interest_queries.shape
        heads, head_size = self.aggregate.n_heads, self.aggregate.head_size
        like = self.interest_queries
        return (
            like.new_full((batch_size, heads, n_queries, 1), float("-inf")),
            like.new_zeros((batch_size, heads, n_queries, 1)),
            like.new_zeros((batch_size, heads, n_queries, head_size)),
        )

    def step(
        self,
        item: torch.Tensor,
        interests: torch.Tensor,
        running: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        position: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Streaming: the block at one new position ``position`` ``[B]``. ``item`` ``[B, H]`` (the block's input
        there), ``interests`` ``[B, k, H]`` (that position's, from the block before), ``running`` (the aggregate's
        prefix state) -> the block's output ``[B, H]``, the position's interests and the running state including
        the position."""
        interests, running = self.aggregate.step(self.interest_queries, interests, item, running, position)
        interests = self.aggregate_ffn(interests)
        output = self.dispatch_ffn(self.dispatch(item.unsqueeze(1), interests)).squeeze(1)
        return output, interests, running
