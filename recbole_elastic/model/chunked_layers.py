"""Chunked causal Linear Dispatcher Attention: k interest states per chunk of C positions, not per position.

The window is cut into chunks of C positions. At the boundary before chunk j the k interest tokens have aggregated
every item before it (positions < C * j); position t of chunk j reads those k interests together with its last C
items (positions t - C < s <= t) in one softmax attention, then one FFN: per position, the work of one Transformer
layer over k + C keys. The interests cost O(N / C * k) states per block, and their aggregate is a running softmax
of k position-independent queries, evaluated at the chunk boundaries only (:func:`chunk_prefix_softmax`).

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression." arXiv 2408.09380.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_elastic.model.layers import CrossAttention, FusedFeedForward

# The aggregate's running softmax of one block, per user: (max [B, h, k, 1], sum of exp(score - max) [B, h, k, 1],
# sum of exp(score - max) * value [B, h, k, d]).
RunningSoftmax = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def chunk_prefix_softmax(
    scores: torch.Tensor, values: torch.Tensor, chunk_size: int, value_keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Softmax attention of each query over the keys before every chunk boundary, without an N x N tensor.

    ``scores`` ``[B, heads, Q, P]`` (``-inf`` at padding; P a multiple of ``chunk_size``, n = P / chunk_size
    chunks), ``values`` ``[B, heads, P, d]``. Returns ``[B, heads, Q, n, d]``::

        out[..., q, j, :] = sum_{s < C j} softmax(scores[..., q, :C j])_s * values[..., s, :]   (0 for j = 0)

    Each chunk is reduced to its max score m_c, sum of exp(score - m_c) and sum of exp(score - m_c) * value; the
    boundary j combines the chunks c < j, rescaled by exp(m_c - M_j) with M_j = max_{c < j} m_c (every exponent
    <= 0, and the chunk holding M_j adds at least 1 to the sum, so nothing underflows to 0 / 0). The shifts are
    detached: softmax does not depend on them, so gradients are exact. ``value_keep`` ``[B, heads, Q, P]``
    (attention dropout) scales each key's value term and leaves the normaliser alone.
    """
    batch, heads, n_queries, padded = scores.shape
    n_chunks = padded // chunk_size
    chunked = scores.view(batch, heads, n_queries, n_chunks, chunk_size)
    chunk_max = chunked.detach().amax(-1)  # [B h Q n]; -inf for a chunk of padding only
    finite_max = chunk_max.masked_fill(chunk_max == float("-inf"), 0.0)
    weights = (chunked - finite_max.unsqueeze(-1)).exp()  # [B h Q n C]; 0 at padding
    chunk_sum = weights.sum(-1)  # [B h Q n]
    if value_keep is not None:
        weights = weights * value_keep.view_as(weights)
    chunk_values = values.view(batch, heads, n_chunks, chunk_size, -1)
    chunk_numerator = torch.einsum("bhqnc,bhncd->bhqnd", weights, chunk_values)
    # M_j, the max over the chunks before boundary j (0 where there are none: that row has no terms).
    boundary_max = torch.cat([torch.zeros_like(chunk_max[..., :1]), chunk_max.cummax(-1).values[..., :-1]], dim=-1)
    boundary_max = boundary_max.masked_fill(boundary_max == float("-inf"), 0.0)
    before = torch.ones(n_chunks, n_chunks, dtype=torch.bool, device=scores.device).tril(-1)  # [j, c]: c < j
    exponent = chunk_max.unsqueeze(-2) - boundary_max.unsqueeze(-1)  # [B h Q n(j) n(c)]
    rescale = torch.where(before, exponent, float("-inf")).exp()  # 0 for c >= j and for chunks of padding
    denominator = (rescale @ chunk_sum.unsqueeze(-1)).clamp(min=1.0)  # >= 1 wherever a key is visible
    return (rescale @ chunk_numerator) / denominator  # [B h Q n d]


class ChunkAggregation(nn.Module):
    """The aggregate stage: at every chunk boundary, k position-independent queries attend (softmax) to all the
    block's input before it, and the result updates the interest states of that boundary (residual, then
    LayerNorm unless ``norm_first``: pre-LN has nothing to normalise here, its queries are parameters).

    Its keys and values are the dispatch's (:class:`LocalDispatch` projects the block's input once for both
    stages): a second pair of projections of every position would be a third of a Transformer layer's
    position-wise work more, for the k queries' sake only.

    ``recency_bias``: a learned ALiBi-style slope per head and query scores key s with ``- slope * (t - s)``; the
    ``t`` part is the same for every key of one softmax and cancels, leaving the per-key bias ``slope * s`` (see
    ``causal_layers.PrefixAggregation``).
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_queries: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        layer_norm_eps: float,
        chunk_size: int,
        initializer_range: float,
        recency_bias: bool = False,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.attn_dropout_prob = attn_dropout_prob
        self.chunk_size = chunk_size
        self.interest_queries = nn.Parameter(torch.empty(n_queries, hidden_size))
        nn.init.normal_(self.interest_queries, mean=0.0, std=initializer_range)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        # Pre-LN has nothing to normalise before this stage (its queries are parameters) and no LayerNorm after it.
        self.LayerNorm = None if norm_first else nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.recency_slopes = None
        if recency_bias:
            slopes = 2.0 ** -torch.arange(n_queries, dtype=torch.float)  # horizons of about 1 .. 2^(k-1) items
            self.recency_slopes = nn.Parameter(slopes.expand(n_heads, -1).clone())  # [h k]

    def query_heads(self) -> torch.Tensor:
        """The k queries, per head ``[h, k, d]``."""
        n_queries = self.interest_queries.size(0)
        return self.query(self.interest_queries).view(n_queries, self.n_heads, self.head_size).transpose(0, 1)

    def key_scores(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, h, k, L]`` of the queries against per-head keys ``[B, h, L, d]`` at ``positions`` ``[L]``
        or ``[B, L]``."""
        scores = torch.matmul(self.query_heads().unsqueeze(0), keys.transpose(-2, -1)) / math.sqrt(self.head_size)
        if self.recency_slopes is not None:
            positions = positions.to(scores.dtype)
            positions = positions.view(1, 1, 1, -1) if positions.dim() == 1 else positions[:, None, None, :]
            scores = scores + self.recency_slopes.unsqueeze(-1) * positions
        return scores

    def update(self, interests: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual, dropout and (post-LN) LayerNorm: ``attended`` (heads merged) into ``interests``, both
        ``[..., k, H]``."""
        residual = interests + self.out_dropout(self.dense(attended))
        return residual if self.LayerNorm is None else self.LayerNorm(residual)

    def forward(
        self, interests: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sequence_mask: torch.Tensor
    ) -> torch.Tensor:
        """interests ``[B, n, k, H]`` (one set per boundary), the block input's per-head keys and values
        ``[B, h, P, d]``, ``sequence_mask`` ``[B, P]`` -> the updated interests."""
        batch, n_chunks, n_queries, hidden = interests.shape
        scores = self.key_scores(key, torch.arange(key.size(2), device=key.device))  # [B h k P]
        scores = scores.masked_fill(~sequence_mask[:, None, None, :], float("-inf"))
        value_keep = None
        if self.training and self.attn_dropout_prob > 0:
            value_keep = F.dropout(torch.ones_like(scores), self.attn_dropout_prob)
        attended = chunk_prefix_softmax(scores, value, self.chunk_size, value_keep)  # [B h k n d]
        return self.update(interests, attended.permute(0, 3, 2, 1, 4).reshape(interests.shape))

    def empty_running_state(self, batch_size: int) -> RunningSoftmax:
        """The running softmax before any position: max -inf, sums 0."""
        like = self.interest_queries
        n_queries = like.size(0)
        return (
            like.new_full((batch_size, self.n_heads, n_queries, 1), float("-inf")),
            like.new_zeros((batch_size, self.n_heads, n_queries, 1)),
            like.new_zeros((batch_size, self.n_heads, n_queries, self.head_size)),
        )

    def fold(
        self, running: RunningSoftmax, key: torch.Tensor, value: torch.Tensor, position: torch.Tensor
    ) -> RunningSoftmax:
        """Streaming: the running softmax with one more key, the per-head key and value ``[B, h, 1, d]`` of the
        block's input at ``position`` ``[B]``: the same sums :func:`chunk_prefix_softmax` combines."""
        score = self.key_scores(key, position.unsqueeze(-1))  # [B h k 1]
        running_max, running_sum, numerator = running
        new_max = torch.maximum(running_max, score)
        decay = (running_max - new_max).exp()  # 0 before the first key (max -inf)
        weight = (score - new_max).exp()
        return new_max, running_sum * decay + weight, numerator * decay + weight * value

    def from_running(self, interests: torch.Tensor, running: RunningSoftmax) -> torch.Tensor:
        """Streaming: a boundary's interests ``[B, k, H]`` updated with the running softmax of the keys before it
        (attended 0 before the first key, as :func:`chunk_prefix_softmax` at boundary 0)."""
        _, running_sum, numerator = running
        attended = numerator / running_sum.clamp(min=1.0)  # [B h k d]; the sum is >= 1 once a key is folded
        return self.update(interests, attended.transpose(1, 2).reshape(interests.shape))


class LocalDispatch(CrossAttention):
    """The dispatch stage: position t attends, in one softmax, to its chunk's k interests and (``local``) to its
    last C items ``t - C < s <= t``, then residual, post-LN. Keys and values of both share the projections.
    With ``norm_first`` (pre-LN) the queries and the items are read through ``LayerNorm`` and the interests
    through their own ``interest_norm`` (they are a separate residual stream); the output is the residual sum.

    Keys per chunk: ``[k interests | previous chunk | own chunk]``; a fixed band mask keeps, of the 2C items, those
    in the last C positions up to t. O(N * (k + 2C) * H) time, no N x N tensor.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        layer_norm_eps: float,
        chunk_size: int,
        local: bool = True,
        norm_first: bool = False,
    ) -> None:
        super().__init__(hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps, norm_first)
        self.chunk_size = chunk_size
        self.local = local
        self.interest_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps) if norm_first else nn.Identity()
        rows = torch.arange(chunk_size).unsqueeze(1)  # the query's place r in its chunk
        columns = torch.arange(2 * chunk_size).unsqueeze(0)  # the key's place i in [previous chunk | own chunk]
        # previous chunk: key C(j-1) + i is within the last C positions of Cj + r when i > r; own chunk: i <= r
        self.register_buffer("band", (columns > rows) & (columns <= rows + chunk_size), persistent=False)

    def forward(
        self,
        sequence: torch.Tensor,
        interests: torch.Tensor,
        sequence_mask: torch.Tensor,
        item_query: torch.Tensor,
        item_key: torch.Tensor,
        item_value: torch.Tensor,
    ) -> torch.Tensor:
        """sequence ``[B, P, H]`` (the residual), each chunk's interests ``[B, n, k, H]``, ``sequence_mask``
        ``[B, P]``, the sequence's queries, keys and values ``[B, P, H]`` (``self.query``/``key``/``value`` of
        ``self.normalize(sequence)``) -> the attended sequence."""
        batch, padded, hidden = sequence.shape
        n_chunks, n_interests, chunk = interests.size(1), interests.size(2), self.chunk_size
        heads, head_size = self.n_heads, self.head_size
        query = item_query.view(batch * n_chunks, chunk, heads, head_size).transpose(1, 2)
        interests = self.interest_norm(interests)
        key = self.key(interests).view(batch * n_chunks, n_interests, heads, head_size)
        value = self.value(interests).view(batch * n_chunks, n_interests, heads, head_size)
        visible = sequence_mask.new_ones(batch * n_chunks, 1, chunk, n_interests)
        if self.local:
            real = sequence_mask.view(batch, n_chunks, chunk)

            def with_previous_chunk(x: torch.Tensor) -> torch.Tensor:  # [B n C ...] -> [B n 2C ...]
                previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # none before the first
                return torch.cat([previous, x], dim=2)

            local_key = with_previous_chunk(item_key.view(batch, n_chunks, chunk, hidden))
            local_value = with_previous_chunk(item_value.view(batch, n_chunks, chunk, hidden))
            key = torch.cat([key, local_key.view(batch * n_chunks, 2 * chunk, heads, head_size)], dim=1)
            value = torch.cat([value, local_value.view(batch * n_chunks, 2 * chunk, heads, head_size)], dim=1)
            local_visible = self.band & with_previous_chunk(real.unsqueeze(-1)).view(batch * n_chunks, 1, 1, -1)
            visible = torch.cat([visible, local_visible], dim=-1)  # [B*n 1 C k+2C]
        # An additive mask: the CPU kernels take it on a faster path than a boolean one.
        mask = torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(~visible, float("-inf"))
        attended = F.scaled_dot_product_attention(
            query,
            key.transpose(1, 2),
            value.transpose(1, 2),
            attn_mask=mask,
            dropout_p=self.attn_dropout_prob if self.training else 0.0,
        )  # [B*n h C d]
        return self.output(sequence, attended)

    def step(self, item: torch.Tensor, interests: torch.Tensor, recent: torch.Tensor, recent_mask: torch.Tensor):
        """Streaming: the new position's ``item`` ``[B, H]`` attends to ``interests`` ``[B, k, H]`` and (``local``)
        its last C items ``recent`` ``[B, C, H]`` (itself included; ``recent_mask`` ``[B, C]`` True where filled)."""
        context, mask = self.interest_norm(interests), recent_mask.new_ones(item.size(0), interests.size(1))
        if self.local:
            context, mask = torch.cat([context, self.normalize(recent)], 1), torch.cat([mask, recent_mask], 1)
        # One query over [interests | recent items]: plain cross-attention (streaming is inference: no dropout).
        return super().forward(item.unsqueeze(1), context, mask).squeeze(1)


class ChunkedDispatcherBlock(nn.Module):
    """One chunked causal LDA block (see the module docstring): aggregate at the chunk boundaries (then the
    interests' FFN unless ``interest_ffn`` is False), dispatch with the local window, then a position-wise FFN.
    Every stage post-LN, or pre-LN with ``norm_first`` (the model then normalises the last block's output)."""

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
        local_attention: bool = True,
        recency_bias: bool = False,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        ffn_args = (hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps, norm_first)
        attention_args = (hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps)
        self.aggregate = ChunkAggregation(
            hidden_size,
            n_heads,
            n_interests,
            *attention_args[2:],
            chunk_size,
            initializer_range,
            recency_bias,
            norm_first,
        )
        self.aggregate_ffn = FusedFeedForward(*ffn_args) if interest_ffn else nn.Identity()
        self.dispatch = LocalDispatch(*attention_args, chunk_size, local_attention, norm_first)
        self.dispatch_ffn = FusedFeedForward(*ffn_args)

    def forward(
        self, sequence: torch.Tensor, interests: torch.Tensor, sequence_mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """sequence ``[B, P, H]``, interests ``[B, n, k, H]``, ``sequence_mask`` ``[B, P]`` -> both updated."""
        dispatch = self.dispatch
        block_input = dispatch.normalize(sequence)  # what both stages read, projected once
        item_key, item_value = dispatch.key(block_input), dispatch.value(block_input)  # [B P H]
        interests = self.aggregate(
            interests, dispatch.split_heads(item_key), dispatch.split_heads(item_value), sequence_mask
        )
        interests = self.aggregate_ffn(interests)
        attended = dispatch(sequence, interests, sequence_mask, dispatch.query(block_input), item_key, item_value)
        sequence = self.dispatch_ffn(attended)
        return sequence, interests

    def step(
        self,
        item: torch.Tensor,
        interests: torch.Tensor,
        running: RunningSoftmax,
        recent: torch.Tensor,
        recent_mask: torch.Tensor,
        position: torch.Tensor,
    ) -> Tuple[torch.Tensor, RunningSoftmax]:
        """Streaming, one new position per user: its block input ``item`` ``[B, H]`` at ``position`` ``[B]``, the
        current boundary's ``interests`` ``[B, k, H]``, the aggregate's ``running`` softmax, the block's input at
        the last C positions ``recent`` ``[B, C, H]`` (this one last; ``recent_mask`` True where filled) -> the
        block's output ``[B, H]`` and the running softmax with this position folded in."""
        heads = self.dispatch.split_heads
        block_input = self.dispatch.normalize(item).unsqueeze(1)  # [B 1 H]
        key, value = heads(self.dispatch.key(block_input)), heads(self.dispatch.value(block_input))
        running = self.aggregate.fold(running, key, value, position)
        output = self.dispatch_ffn(self.dispatch.step(item, interests, recent, recent_mask))
        return output, running
