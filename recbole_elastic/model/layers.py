"""Reusable layers of ELASTIC (linear dispatcher attention, the product-key interest memory) and LinRec.

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression." arXiv 2408.09380.
    Guillaume Lample et al. "Large Memory Layers with Product Keys." NeurIPS 2019.
    Langming Liu et al. "LinRec: Linear Attention Mechanism for Long-term Sequential Recommender Systems." SIGIR 2023.
"""

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole.model.layers import FeedForward


class FusedFeedForward(FeedForward):
    """RecBole's position-wise ``FeedForward`` (same layers, parameters and output) with fused activations.

    RecBole computes GELU as ``x * 0.5 * (1 + erf(x / sqrt(2)))``: five passes over the ``[B, N, inner_size]``
    tensor and four saved intermediates. ``torch.nn.functional.gelu`` computes the same exact (erf) GELU in one
    pass, about 4x faster on CPU, and saves only its input for backward; swish is ``silu``.

    With ``norm_first`` the LayerNorm moves to the input (pre-LN, Xiong et al. 2020): ``x + dropout(W2 act(W1
    LayerNorm(x)))``, the same parameters.
    """

    def __init__(
        self,
        hidden_size: int,
        inner_size: int,
        hidden_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
        norm_first: bool = False,
    ) -> None:
        super().__init__(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
        self.norm_first = norm_first

    def get_hidden_act(self, act: str):
        return {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act]

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        if not self.norm_first:
            return super().forward(input_tensor)
        hidden = self.dense_2(self.intermediate_act_fn(self.dense_1(self.LayerNorm(input_tensor))))
        return input_tensor + self.dropout(hidden)


class ProjectedAttention(nn.Module):
    """Q, K, V and output projections with SASRec's residual, dropout and post-LayerNorm around them.

    With ``norm_first`` the LayerNorm normalises the queries' input instead (:meth:`normalize`, pre-LN) and the
    output is the plain residual sum. Subclasses define how the per-head queries, keys and values
    ``[B, heads, L, d]`` are combined.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        hidden_dropout_prob: float,
        layer_norm_eps: float,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_dropout = nn.Dropout(hidden_dropout_prob)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]`` -> ``[B, heads, L, H / heads]``."""
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, self.n_heads, self.head_size).transpose(1, 2)

    def project(self, queries: torch.Tensor, context: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries from ``queries``, keys and values from ``context``."""
        return (
            self.split_heads(self.query(queries)),
            self.split_heads(self.key(context)),
            self.split_heads(self.value(context)),
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The input a sub-layer reads: LayerNorm of ``x`` with ``norm_first``, ``x`` itself otherwise."""
        return self.LayerNorm(x) if self.norm_first else x

    def output(self, queries: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Merge heads ``[B, heads, L, d]``, project, dropout, add the residual ``queries`` (the un-normalised
        input) and, post-LN, LayerNorm."""
        attended = attended.transpose(1, 2).reshape(queries.shape)
        residual = queries + self.out_dropout(self.dense(attended))
        return residual if self.norm_first else self.LayerNorm(residual)


class CrossAttention(ProjectedAttention):
    """Multi-head softmax attention of ``queries`` over a separate ``context`` (post-LN as SASRec, or pre-LN).

    Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; padding is a
    ``[B, 1, 1, N_context]`` boolean mask, so no query-by-context mask is ever materialised.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        layer_norm_eps: float,
        norm_first: bool = False,
    ) -> None:
        super().__init__(hidden_size, n_heads, hidden_dropout_prob, layer_norm_eps, norm_first)
        self.attn_dropout_prob = attn_dropout_prob

    def attend(
        self, queries: torch.Tensor, context: torch.Tensor, attn_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """The per-head attention ``[B, heads, Q, d]`` of queries ``[B, Q, H]`` over context ``[B, C, H]`` (both as
        the projections read them) under ``attn_mask`` (any mask ``scaled_dot_product_attention`` takes, e.g.
        SASRec's additive ``[B, 1, Q, C]``)."""
        return F.scaled_dot_product_attention(
            *self.project(queries, context),
            attn_mask=attn_mask,
            dropout_p=self.attn_dropout_prob if self.training else 0.0,
        )

    def forward(
        self, queries: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """queries ``[B, Q, H]`` attend to context ``[B, C, H]``; ``context_mask`` ``[B, C]`` is True where valid.
        The context is read as given: pre-LN, the caller passes it normalised."""
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]
        return self.output(queries, self.attend(self.normalize(queries), context, attn_mask))


class PreNormTransformerEncoder(nn.Module):
    """SASRec's Transformer encoder with pre-LN layers (Xiong et al. 2020; PyTorch's ``norm_first``): each attention
    and FFN sub-layer reads LayerNorm of its input and adds its output to that input unnormalised; one LayerNorm
    ends the stack. (The original SASRec also normalises first, but reads unnormalised keys and adds the residual to
    the normalised input.)"""

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        hidden_size: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
    ) -> None:
        super().__init__()
        attention_args = (hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, layer_norm_eps, True)
        ffn_args = (hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps, True)
        self.attention = nn.ModuleList(CrossAttention(*attention_args) for _ in range(n_layers))
        self.feed_forward = nn.ModuleList(FusedFeedForward(*ffn_args) for _ in range(n_layers))
        self.output_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, N, H]`` under the additive ``[B, 1, N, N]`` mask -> the last layer's output ``[B, N, H]``."""
        for attention, feed_forward in zip(self.attention, self.feed_forward):
            normalized = attention.normalize(hidden_states)  # self-attention: queries and context alike
            attended = attention.attend(normalized, normalized, attention_mask)
            hidden_states = feed_forward(attention.output(hidden_states, attended))
        return self.output_norm(hidden_states)


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
        self.aggregate_ffn = FusedFeedForward(*ffn_args)
        self.dispatch = CrossAttention(*attention_args)
        self.dispatch_ffn = FusedFeedForward(*ffn_args)

    def forward(
        self,
        sequence: torch.Tensor,
        interests: torch.Tensor,
        sequence_mask: torch.Tensor,
        readout_index: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The updated sequence ``[B, N, H]`` (``[B, 1, H]`` with ``readout_index``) and interests ``[B, k, H]``."""
        interests = self.aggregate_ffn(self.aggregate(interests, sequence, sequence_mask))
        if readout_index is not None:
            sequence = sequence.gather(1, readout_index.view(-1, 1, 1).expand(-1, 1, sequence.size(-1)))
        sequence = self.dispatch_ffn(self.dispatch(sequence, interests))
        return sequence, interests


# How retrieval queries are normalised: "batch": BatchNorm with batch statistics in training (Lample et al.; it mixes
# the rows of a batch); "running": BatchNorm that normalises with its running statistics and updates them from each
# training batch (no row sees another); "layer": LayerNorm of each head's query; "none".
QUERY_NORMS = ("batch", "running", "layer", "none")


class ProductKeyInterestMemory(nn.Module):
    """Interest Memory Retrieval (IMR): a product-key memory of ``n_keys ** 2`` interest slots.

    There is one retrieval head per interest token. Head ``h`` turns the user summary into a query of size
    ``key_dim``, splits it into halves, scores each half against its own table of ``n_keys`` sub-keys, keeps the
    ``topk`` best per half, scores the ``topk * topk`` candidate sums and keeps the ``topk`` best slots. The slot
    values (shared by all heads) are summed with the softmax of their scores, so gradients reach both sub-keys and
    values. Retrieval costs O(heads * n_keys * key_dim + heads * topk^2): it grows with ``n_keys``, never with the
    number of slots ``n_keys ** 2``, which are never scored all at once.

    Training cost of the value table (``n_keys ** 2`` rows of size ``hidden_size``):

    * ``sparse=False``: backward builds a dense ``[n_keys ** 2, H]`` gradient and the trainer's optimizer (Adam)
      updates every row every step, so a step costs O(n_keys ** 2 * H) however few slots the batch used.
    * ``sparse=True``: the gradient is a sparse tensor holding only the retrieved rows (at most
      ``B * heads * topk``), and :class:`recbole_elastic.optim.LazyAdam` (set up by
      :func:`recbole_elastic.optim.build_optimizer`) updates only those rows: the step costs O(rows touched * H).
      This is lazy Adam: a row's moments are updated, and the row moved, only in steps that retrieve it. Dense
      Adam would keep moving an untouched row by its decaying momentum and decay its moments; lazy Adam leaves
      both as they were (bias correction still uses the global step count, as ``torch.optim.SparseAdam``).
      Weight decay likewise reaches only touched rows. Rows never retrieved stay exactly as dense Adam leaves
      them (zero moments, no movement). Memory is unchanged: the table and its two moment tables stay dense.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_keys: int,
        topk: int,
        key_dim: int,
        query_norm,
        initializer_range: float,
        sparse: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(query_norm, bool):  # ``memory_query_batchnorm`` (ELASTIC's key) and old checkpoints
            query_norm = "batch" if query_norm else "none"
        if query_norm not in QUERY_NORMS:
            raise ValueError(f"query_norm must be one of {QUERY_NORMS}, not {query_norm!r}")
        self.query_norm_kind = query_norm
        self.n_heads = n_heads
        self.n_keys = n_keys
        self.topk = topk
        self.key_dim = key_dim
        self.query_net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, n_heads * key_dim)
        )
        # Lample et al.: normalising queries spreads them over the keys and keeps more slots in use.
        self.query_norm = None
        if query_norm in ("batch", "running"):
            self.query_norm = nn.BatchNorm1d(n_heads * key_dim)
        elif query_norm == "layer":
            self.query_norm = nn.LayerNorm(key_dim)  # per head: each head's query on its own; gain shared by heads
        half = key_dim // 2
        # [heads, 2 halves, n_keys, key_dim / 2]; unit-variance scores for a unit-variance query.
        self.sub_keys = nn.Parameter(torch.randn(n_heads, 2, n_keys, half) / math.sqrt(half))
        # sparse=True: the gradient holds only the retrieved rows (see the class docstring).
        self.values = nn.EmbeddingBag(n_keys * n_keys, hidden_size, mode="sum", sparse=sparse)
        nn.init.normal_(self.values.weight, mean=0.0, std=initializer_range)

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys

    def make_query(self, summary: torch.Tensor) -> torch.Tensor:
        """Queries ``[B, heads, key_dim]`` from user summaries ``[B, H]``, normalised as ``query_norm`` says."""
        query = self.query_net(summary)
        if self.query_norm_kind == "layer":
            return self.query_norm(query.view(-1, self.n_heads, self.key_dim))
        if self.query_norm_kind == "batch":
            # A training batch of one (RecBole's FLOPs probe) has no batch statistics: use the running ones.
            use_batch_stats = self.training and query.size(0) > 1
            query = self._batch_norm(query, training=use_batch_stats)
        elif self.query_norm_kind == "running":
            # Normalise every query with the running statistics of earlier batches, then fold this batch into
            # them: no query depends on another row of its batch (a causal model's later positions, its targets).
            normalised = self._batch_norm(query, training=False)
            if self.training and query.size(0) > 1:
                with torch.no_grad():
                    self._batch_norm(query.detach(), training=True)  # updates the running statistics only
            query = normalised
        return query.view(-1, self.n_heads, self.key_dim)

    def _batch_norm(self, query: torch.Tensor, training: bool) -> torch.Tensor:
        norm = self.query_norm
        return F.batch_norm(
            query,
            norm.running_mean,
            norm.running_var,
            norm.weight,
            norm.bias,
            training=training,
            momentum=norm.momentum,
            eps=norm.eps,
        )

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
        return tokens.view(batch_size, self.n_heads, self.values.embedding_dim), slots  # also for 0 users


def causal_linear_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``out_t = query_t (sum_{j <= t} key_j^T value_j)`` for ``[B, heads, N, d]`` inputs, in chunks of positions."""
    context = query.new_zeros(*query.shape[:-2], query.size(-1), value.size(-1))  # [B heads d d]: earlier chunks
    outputs = []
    for start in range(0, query.size(-2), chunk_size):
        chunk = slice(start, start + chunk_size)
        q, k, v = query[..., chunk, :], key[..., chunk, :], value[..., chunk, :]
        within = torch.matmul(q, k.transpose(-2, -1)).tril()  # [B heads c c]: keys up to each query in the chunk
        outputs.append(torch.matmul(within, v) + torch.matmul(q, context))
        context = context + torch.matmul(k.transpose(-2, -1), v)
    return torch.cat(outputs, dim=-2)  # [B heads N d]


class LinRecAttention(ProjectedAttention):
    r"""LinRec's L2-normalised linear self-attention, with SASRec's output projection, residual and LayerNorm.

    Reference:
        Langming Liu et al. "LinRec: Linear Attention Mechanism for Long-term Sequential Recommender Systems."
        SIGIR 2023.

    Per head, with ``Q, K, V = x W_Q, x W_K, x W_V`` (``[N, d]``, ``d`` the head size)::

        Q_hat = rownorm(elu(Q)),  K_hat = rownorm(elu(K)),  out = Q_hat (K_hat^T V) / sqrt(d)

    where ``rownorm`` divides each token's row by its L2 norm over the head dimension and ``elu`` is the plain ELU
    (not ELU + 1). ``K_hat^T V`` (``[d, d]``) is computed first, so time and memory are O(N d^2): no N x N tensor
    is ever built. There is no softmax and no causal mask.

    The L2 norm is clamped below at ``norm_eps`` (the paper's code has no epsilon) so that an all-zero row gives
    zeros instead of NaN; any row with a norm above ``norm_eps`` is normalised exactly.

    ``key_mask`` (``[B, N]``, True at real items) zeroes the ``K_hat`` rows of padded positions, so they add nothing
    to ``K_hat^T V``. With ``key_mask=None`` every position enters ``K_hat^T V``, padding included, as in the
    paper's code. Attention dropout is not applied (the paper's code declares it but never uses it).

    With ``causal_chunk_size`` (CausalLinRec) position t reads keys and values up to t only: the same formula with
    ``K_hat^T V`` summed over the prefix, ``out_t = Q_hat_t (sum_{j <= t} K_hat_j^T V_j) / sqrt(d)``. It runs in
    chunks of ``causal_chunk_size`` positions (a masked ``[chunk, chunk]`` product inside a chunk, plus the carried
    ``[d, d]`` sum of the chunks before): O(N (chunk + d) d) time, no N x N and no ``[N, d, d]`` tensor.
    """

    def __init__(
        self,
        n_heads: int,
        hidden_size: int,
        hidden_dropout_prob: float,
        layer_norm_eps: float,
        norm_eps: float = 1e-12,
        causal_chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__(hidden_size, n_heads, hidden_dropout_prob, layer_norm_eps)
        self.norm_eps = norm_eps
        self.causal_chunk_size = causal_chunk_size

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """ELU, then each row divided by its L2 norm over the last (head) dimension, clamped at ``norm_eps``."""
        return F.normalize(F.elu(x), p=2.0, dim=-1, eps=self.norm_eps)

    def linear_attention(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``Q_hat (K_hat^T V) / sqrt(d)`` for per-head projections ``[B, heads, N, d]``; returns ``[B, heads, N, d]``.

        ``key_mask`` ``[B, N]`` (True at real items) zeroes the padded rows of ``K_hat``; None keeps every row.
        """
        query = self.feature_map(query)
        key = self.feature_map(key)
        if key_mask is not None:
            key = key * key_mask[:, None, :, None].to(key.dtype)
        if self.causal_chunk_size is not None:
            return causal_linear_attention(query, key, value, self.causal_chunk_size) / math.sqrt(self.head_size)
        context = torch.matmul(key.transpose(-2, -1), value)  # [B, heads, d, d]
        return torch.matmul(query, context) / math.sqrt(self.head_size)

    def forward(self, hidden_states: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``hidden_states`` ``[B, N, H]`` -> ``[B, N, H]``; ``key_mask`` ``[B, N]`` is True at real items."""
        attended = self.linear_attention(*self.project(hidden_states, hidden_states), key_mask)
        return self.output(hidden_states, attended)


class LinRecEncoder(nn.Module):
    """``n_layers`` LinRec Transformer layers: :class:`LinRecAttention` then RecBole's ``FeedForward`` (post-LN).

    SASRec's ``TransformerEncoder`` with its softmax attention replaced; returns the last layer's output.
    ``causal_chunk_size`` makes every layer causal (see :class:`LinRecAttention`).
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        hidden_size: int,
        inner_size: int,
        hidden_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
        causal_chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.attention_layers = nn.ModuleList(
            LinRecAttention(
                n_heads, hidden_size, hidden_dropout_prob, layer_norm_eps, causal_chunk_size=causal_chunk_size
            )
            for _ in range(n_layers)
        )
        self.feed_forward_layers = nn.ModuleList(
            FusedFeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)
            for _ in range(n_layers)
        )

    def forward(self, hidden_states: torch.Tensor, key_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, N, H]`` -> ``[B, N, H]``; ``key_mask`` as in :class:`LinRecAttention`."""
        for attention, feed_forward in zip(self.attention_layers, self.feed_forward_layers):
            hidden_states = feed_forward(attention(hidden_states, key_mask))
        return hidden_states
