"""
ChunkedELASTIC
################################################

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression."
    arXiv 2408.09380, 2024.

A causal ELASTIC that compresses per chunk, not per position. CausalELASTIC (``causal_elastic.py``) keeps k interest
states at every position, so each block does k times a Transformer layer's position-wise work; here the window is
cut into chunks of C = ``interest_chunk_size`` positions and the k interest states exist once per chunk boundary:

* Interest Memory Retrieval once per chunk: the retrieval query at the boundary before chunk j is the mean of the
  input embeddings of every item before it (positions < C j; the empty prefix of chunk 0 gives the mean 0),
  through ELASTIC's MLP, a normalisation that never mixes positions (``memory_query_norm``, as CausalELASTIC) and
  the product-key memory. Without the memory (``use_interest_memory: False``) every boundary starts from k shared
  learnable tokens.
* Aggregate, at each boundary: k learned, position-independent queries per block attend (softmax) to the block's
  input at every position before the boundary, a running compression of the whole prefix, evaluated at the N / C
  boundaries only (``chunked_layers.chunk_prefix_softmax``); residual into that boundary's interests, LayerNorm,
  then ELASTIC's FFN on the interests (``interest_ffn``). The queries do not depend on the interests (the paper
  aggregates with the interest tokens themselves): so all boundaries are computed at once, not chunk after chunk.
  With ``causal_recency_bias`` each query has a learned ALiBi-style slope, as in CausalELASTIC.
* Dispatch with the latest items: position t of chunk j attends in one softmax to the k interests of boundary j
  and (``local_attention``) to its last C items, positions t - C < s <= t, itself included: the short-term order
  SASRec's query at t sees. Then residual, LayerNorm and one position-wise FFN. Every item before t reaches t
  once directly or through the interests (items t - C < s < C j through both).
* Readout (``forward``): the output of ``forward_all_positions`` at ``item_seq_len - 1``.
* Normalisation: post-LN as SASRec (residual, then LayerNorm, after every stage), or with ``norm_first`` pre-LN
  (each stage reads LayerNorm of its input and adds to it; the dispatch normalises the interests it reads with a
  LayerNorm of its own; one LayerNorm on the last block's output). The paper does not say which.

Cost per block: one FFN and one attention over k + 2C keys (a band mask keeps C of the 2C) per position, plus
O(N / C * k) interest states. No ``[B, N, k, H]`` and no N x N tensor. The window is padded to a multiple of C
(padding is masked; positions past the position table reuse its last embedding).

Streaming (``init_stream_state``, ``stream_update``, ``stream_scores``; always inference): per user and block, the
k interests of the current boundary, the aggregate's running softmax over every event so far, and the block's input
at the last C events; plus the running sum of the input embeddings. Its size does not depend on the history. At
every C-th event the interests of the next boundary are computed from the running sums. Folding one event gives
``forward_all_positions`` over the whole history at that event's position.
"""

from dataclasses import dataclass
from typing import List

import torch
from torch import nn

from recbole_elastic.model.abstract import inference
from recbole_elastic.model.all_positions import AllPositionsMixin
from recbole_elastic.model.causal_elastic import causal_query_norm, check_causal_query_norm, interest_block_sizes
from recbole_elastic.model.chunked_layers import ChunkedDispatcherBlock, RunningSoftmax
from recbole_elastic.model.elastic import ELASTIC
from recbole_elastic.model.elastic import check_hyperparameters as check_elastic_hyperparameters
from recbole_elastic.model.hyperparameters import HyperparameterChecker


@dataclass
class ChunkedStreamState:
    """What ChunkedELASTIC keeps per user to score the next item without re-reading the history ([B, ...])."""

    length: torch.Tensor  # [B] events folded so far (the next event's position)
    embedding_sum: torch.Tensor  # [B H] sum of the input embeddings: the next boundary's retrieval query
    interests: List[torch.Tensor]  # per block [B k H]: the current boundary's interests
    running: List[RunningSoftmax]  # per block: the aggregate's running softmax over every event so far
    recent: List[torch.Tensor]  # per block [B C H]: its input at the last C events, oldest first (zeros before)
    output: torch.Tensor  # [B H] the last event's output, which the next item is scored from


def check_hyperparameters(config) -> None:
    """Raise :class:`ConfigError` naming the first ChunkedELASTIC hyperparameter outside its allowed range."""
    check_elastic_hyperparameters(config, "ChunkedELASTIC")
    checker = HyperparameterChecker("ChunkedELASTIC", config)
    checker.require("interest_chunk_size", checker.is_int("interest_chunk_size", 1), "an integer >= 1")
    for key in ("interest_ffn", "local_attention", "causal_recency_bias"):
        checker.require_bool(key)
    checker.require_bool("norm_first", optional=True)
    check_causal_query_norm(checker, config)


class ChunkedELASTIC(AllPositionsMixin, ELASTIC):
    r"""Causal ELASTIC with k interest states per chunk of positions and local attention to the latest items.

    See the module docstring for the architecture and every choice it makes.
    """

    def __init__(self, config, dataset):
        check_hyperparameters(config)
        super(ChunkedELASTIC, self).__init__(config, dataset)
        self.chunk_size = config["interest_chunk_size"]
        # Pre-LN leaves the last block's output unnormalised (None: a checkpoint saved before the key, post-LN).
        self.norm_first = bool(config["norm_first"])
        self.output_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps) if self.norm_first else nn.Identity()

    def memory_query_norm(self, config) -> str:
        return causal_query_norm(config)

    def make_dispatcher_block(self, config) -> nn.Module:
        return ChunkedDispatcherBlock(
            **interest_block_sizes(self),
            chunk_size=config["interest_chunk_size"],
            interest_ffn=config["interest_ffn"],
            local_attention=config["local_attention"],
            recency_bias=config["causal_recency_bias"],
            norm_first=bool(config["norm_first"]),
        )

    def boundary_tokens(self, summaries: torch.Tensor) -> torch.Tensor:
        """The interest tokens ``[M, k, H]`` the first block starts from, for boundary summaries ``[M, H]``."""
        if self.use_interest_memory:
            return self.interest_memory(summaries)[0]
        return self.shared_interests.expand(summaries.size(0), -1, -1)

    def initial_interests(self, sequence: torch.Tensor, sequence_mask: torch.Tensor) -> torch.Tensor:
        """Each boundary's initial interests ``[B, n, k, H]``, retrieved from the items before it (``[B, P, H]``
        input, P a multiple of the chunk size)."""
        batch, padded, hidden = sequence.shape
        n_chunks = padded // self.chunk_size
        mask = sequence_mask.unsqueeze(-1).to(sequence.dtype)
        chunk_sums = (sequence * mask).view(batch, n_chunks, self.chunk_size, hidden).sum(2)  # [B n H]
        chunk_counts = mask.view(batch, n_chunks, self.chunk_size).sum(2)  # [B n]
        # Sums before each boundary: shifted, not cumsum minus the own chunk, whose later items would then move
        # the earlier boundaries' rounding.
        sums = torch.cat([torch.zeros_like(chunk_sums[:, :1]), chunk_sums[:, :-1].cumsum(1)], dim=1)
        counts = torch.cat([torch.zeros_like(chunk_counts[:, :1]), chunk_counts[:, :-1].cumsum(1)], dim=1)
        summaries = sums / counts.clamp(min=1).unsqueeze(-1)  # [B n H]; 0 at boundary 0
        # Only boundaries whose chunk holds a real position are read; the others stay zeros.
        read = sequence_mask.view(batch, n_chunks, self.chunk_size).any(-1)  # [B n]
        interests = sequence.new_zeros(batch, n_chunks, self.n_interests, hidden)
        interests[read] = self.boundary_tokens(summaries[read])
        return interests

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        length = item_seq.size(1)
        padding = -length % self.chunk_size
        item_seq = nn.functional.pad(item_seq, (0, padding))  # [B P]: whole chunks
        sequence, sequence_mask = self.embed_sequence(item_seq)
        interests = self.initial_interests(sequence, sequence_mask)
        for block in self.dispatcher_blocks:
            sequence, interests = block(sequence, interests, sequence_mask)
        return self.output_norm(sequence[:, :length])  # [B N H]

    # Streaming: fold a user's events into a fixed-size state, one at a time (inference).

    def boundary_interests(self, summary: torch.Tensor, running: List[RunningSoftmax]) -> List[torch.Tensor]:
        """Every block's interests ``[B, k, H]`` at a boundary, from the mean input embedding before it and each
        block's running softmax over the events before it."""
        interests, per_block = self.boundary_tokens(summary), []
        for block, block_running in zip(self.dispatcher_blocks, running):
            interests = block.aggregate_ffn(block.aggregate.from_running(interests, block_running))
            per_block.append(interests)
        return per_block

    @inference
    def init_stream_state(self, batch_size: int) -> ChunkedStreamState:
        """The state of ``batch_size`` users with no events yet."""
        weight = self.item_embedding.weight
        running = [block.aggregate.empty_running_state(batch_size) for block in self.dispatcher_blocks]
        embedding_sum = weight.new_zeros(batch_size, self.hidden_size)
        return ChunkedStreamState(
            length=torch.zeros(batch_size, dtype=torch.long, device=weight.device),
            embedding_sum=embedding_sum,
            interests=self.boundary_interests(embedding_sum, running),
            running=running,
            recent=[weight.new_zeros(batch_size, self.chunk_size, self.hidden_size) for _ in self.dispatcher_blocks],
            output=weight.new_zeros(batch_size, self.hidden_size),
        )

    @inference
    def stream_update(self, state: ChunkedStreamState, item_ids: torch.Tensor) -> ChunkedStreamState:
        """Fold one new event per user (``item_ids`` ``[B]``) into ``state``: the new state's ``output`` equals
        ``forward_all_positions`` at this event's position over the whole history, in eval mode. It always runs as
        inference (eval mode, no gradient), whatever mode the model is in."""
        position = state.length
        item = self.embed_at(item_ids, position)
        length = position + 1
        embedding_sum = state.embedding_sum + item
        slots = torch.arange(self.chunk_size, device=item.device)
        recent_mask = slots.unsqueeze(0) >= self.chunk_size - length.clamp(max=self.chunk_size).unsqueeze(1)
        running, recent = [], []
        for block, interests, block_running, block_recent in zip(
            self.dispatcher_blocks, state.interests, state.running, state.recent
        ):
            block_recent = torch.cat([block_recent[:, 1:], item.unsqueeze(1)], dim=1)  # the last C inputs
            item, block_running = block.step(item, interests, block_running, block_recent, recent_mask, position)
            running.append(block_running)
            recent.append(block_recent)
        interests = state.interests
        completed = length % self.chunk_size == 0  # a chunk ends here: the next event reads the next boundary
        if completed.any():
            fresh = self.boundary_interests(embedding_sum / length.unsqueeze(1).to(item.dtype), running)
            keep = completed.view(-1, 1, 1)
            interests = [torch.where(keep, new, old) for new, old in zip(fresh, interests)]
        return ChunkedStreamState(length, embedding_sum, interests, running, recent, output=self.output_norm(item))

    @inference
    def stream_scores(self, state: ChunkedStreamState) -> torch.Tensor:
        """Scores of every item as each user's next event ``[B, n_items]``, from the state alone."""
        return self.score_all_items(state.output)
