"""
CausalELASTIC
################################################

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression."
    arXiv 2408.09380, 2024.

ELASTIC (``elastic.py``, the paper's formulation) encodes a whole sequence and reads its last position; RecBole's
prefix augmentation then re-encodes a user with L interactions L times. CausalELASTIC is ELASTIC made causal: its
output at position t depends on the items up to t only, so one pass over a window yields the prediction of every
next item (``train_all_positions``, ``recbole_elastic.windows``), still in O(N * k) time and memory: no N x N and no
N^2 * k tensor. It is a separate class, not a switch on ELASTIC: its parameters differ (the aggregate queries), and
ELASTIC stays exactly the paper's model.

What changes from ELASTIC (each open choice is a hyperparameter in ``properties/model/CausalELASTIC.yaml`` where
it matters; the rest of ELASTIC's docstring holds):

* Interest Memory Retrieval at every position: position t's retrieval query is the running mean of the input
  embeddings up to t (ELASTIC's masked mean, over the prefix), through the same MLP, a normalisation
  (``memory_query_norm``) and the product-key memory. Every position retrieves its own k interest tokens (N
  retrievals per window, each O(k * memory_keys * memory_key_dim)). The normalisation never mixes positions, in
  training too: ``layer`` (default) normalises each query on its own, ``running`` is BatchNorm on the running
  statistics of earlier batches (updated after each batch), ``none``. ELASTIC's BatchNorm with batch statistics
  is refused here: in a batch of windows it would let every position's query read the batch's later positions,
  targets included. So retrieval at t never sees an item after t, in training as in evaluation.
* Aggregate: in ELASTIC the interest tokens are the aggregation queries. A query that depends on t (position t's
  interests) would need an N x N score matrix per interest, so here each block has k learned queries that do not
  depend on the position (``interest_queries``). At position t they attend, with softmax, to the block's input at
  positions <= t, computed for all t at once as a running softmax (``prefix_softmax_attention``: prefix sums of
  exp(score) and exp(score) * value, in chunks of ``causal_chunk_size`` positions with a carried running max).
  The result is added to position t's own interest states (residual, LayerNorm, then ELASTIC's position-wise FFN
  unless ``causal_interest_ffn`` is False), so the retrieved tokens carry over from block to block as in ELASTIC,
  one set per position.
* Recency (``causal_recency_bias``, off by default): position-independent queries cannot tell the last items
  from older ones (absolute positions say nothing about distance to t), where SASRec's query at t can. With it,
  each aggregate query gets a learned ALiBi-style slope, scoring key s at position t with ``- slope * (t - s)``;
  softmax cancels the ``t`` part, so it is a per-key bias ``slope * s`` and stays linear and streamable (see
  ``PrefixAggregation``).
* Dispatch: position t attends to its own k interest states (ELASTIC's dispatch, per position).
* Attention dropout in the aggregate drops a key's value term for all later positions together (one mask per key
  and query): a mask per (position, key) pair would be an N x N tensor.
* Readout (``forward``): the last block computes position ``item_seq_len - 1`` only, equal to
  ``forward_all_positions`` there. In eval mode it encodes at most ``inference_chunk_positions`` positions
  at a time, users grouped by history length (``all_positions.length_groups``), since each position holds k
  interest states per block (same scores, bounded memory).
  Positions beyond ``MAX_ITEM_LIST_LENGTH`` (sequences longer than the position table, streaming) reuse the last
  position embedding.

Cost: the interest states are ``[B, N, k, H]``; their projections (k * H^2 per position) and FFN (k times a
SASRec layer's FFN per position) make a block several times a SASRec layer's work per position at N = 200, so it
overtakes softmax self-attention (N * H per position) only for long windows (on CPU, B = 32, default sizes: about
N = 1000 with the interest FFN, earlier without). ``causal_interest_ffn: False`` halves the training time.

Streaming (``init_stream_state``, ``stream_update``, ``stream_scores``; always inference: eval mode, whatever
mode the model is in): a user's state is the retrieval
query's running sum and, per block, the aggregate's running softmax (running max, sum of exp(score - max), sum of
exp(score - max) * value per head and query): its size does not depend on the history. Folding one event computes
that event's position through every block from the state alone, and scores the next item from its output: equal
to ``forward_all_positions`` over the whole history at that position. Past ``MAX_ITEM_LIST_LENGTH`` events the
state keeps aggregating the whole history (running sums cannot forget the oldest event without re-reading it) and
every later event takes the last position embedding, as ``forward_all_positions`` does on a longer sequence: a
model trained on windows of N items then reads longer contexts than it was trained on.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from recbole_elastic.model.abstract import inference
from recbole_elastic.model.all_positions import AllPositionsMixin
from recbole_elastic.model.causal_layers import CausalDispatcherBlock
from recbole_elastic.model.elastic import ELASTIC
from recbole_elastic.model.elastic import check_hyperparameters as check_elastic_hyperparameters
from recbole_elastic.model.hyperparameters import HyperparameterChecker

CAUSAL_QUERY_NORMS = ("layer", "running", "none")


@dataclass
class StreamState:
    """What CausalELASTIC keeps per user to score the next item without re-reading the history (batched: [B, ...]).

    Its size does not depend on the history length: per user, H + 1 numbers for retrieval and, per block,
    ``n_heads * k * (head_size + 2)`` for the aggregate's running softmax.
    """

    length: torch.Tensor  # [B] events folded so far (the next event's position)
    embedding_sum: torch.Tensor  # [B H] the sum of the input embeddings: the retrieval query's running mean
    running: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # per block: running max, sum, numerator
    output: torch.Tensor  # [B H] the last event's output, which the next item is scored from


def check_hyperparameters(config) -> None:
    """Raise :class:`ConfigError` naming the first CausalELASTIC hyperparameter outside its allowed range."""
    check_elastic_hyperparameters(config, "CausalELASTIC")
    checker = HyperparameterChecker("CausalELASTIC", config)
    checker.require("causal_chunk_size", checker.is_int("causal_chunk_size", 1), "an integer >= 1")
    checker.require_bool("causal_interest_ffn")
    checker.require_bool("causal_recency_bias")
    check_causal_query_norm(checker, config)


def check_causal_query_norm(checker: HyperparameterChecker, config) -> None:
    """``memory_query_norm`` of a causal model: never BatchNorm's batch statistics, which would let each training
    position's retrieval read the batch's later positions (its own targets among them)."""
    if config["use_interest_memory"] and config["memory_query_norm"] is not None:
        checker.require(
            "memory_query_norm",
            config["memory_query_norm"] in CAUSAL_QUERY_NORMS,
            f"one of {list(CAUSAL_QUERY_NORMS)} (batch statistics would mix the positions of a training batch)",
        )


def interest_block_sizes(model: ELASTIC) -> Dict[str, Any]:
    """The sizes, dropouts and initialisation a causal model's dispatcher blocks take from it."""
    keys = ("hidden_size", "n_heads", "n_interests", "inner_size", "hidden_dropout_prob", "attn_dropout_prob")
    keys += ("hidden_act", "layer_norm_eps", "initializer_range")
    return {key: getattr(model, key) for key in keys}


def causal_query_norm(config) -> str:
    """``memory_query_norm``; a checkpoint saved before the key existed had ``memory_query_batchnorm``, whose
    evaluation (BatchNorm on its running statistics) ``running`` reproduces exactly."""
    if config["memory_query_norm"] is not None:
        return config["memory_query_norm"]
    return "running" if config["memory_query_batchnorm"] else "none"


class CausalELASTIC(AllPositionsMixin, ELASTIC):
    r"""ELASTIC whose output at every position depends only on the items up to it, at O(N * k) cost.

    See the module docstring for what changes from ELASTIC and why.
    """

    def __init__(self, config, dataset):
        check_hyperparameters(config)
        super(CausalELASTIC, self).__init__(config, dataset)

    def memory_query_norm(self, config) -> str:
        return causal_query_norm(config)

    def make_dispatcher_block(self, config) -> nn.Module:
        return CausalDispatcherBlock(
            **interest_block_sizes(self),
            chunk_size=config["causal_chunk_size"],
            interest_ffn=config["causal_interest_ffn"],
            recency_bias=config["causal_recency_bias"],
        )

    def initial_interests(self, sequence: torch.Tensor, sequence_mask: torch.Tensor) -> torch.Tensor:
        """Each position's initial interest tokens ``[B, N, k, H]``, retrieved from the prefix up to it (ELASTIC's
        ``forward`` reads them out at ``item_seq_len - 1`` through this model's causal blocks)."""
        batch, length, hidden = sequence.shape
        if not self.use_interest_memory:
            return self.shared_interests.expand(batch, length, -1, -1)
        mask = sequence_mask.unsqueeze(-1).to(sequence.dtype)
        summaries = (sequence * mask).cumsum(1) / mask.cumsum(1).clamp(min=1)  # [B N H]: running means
        # Padded positions retrieve nothing (zeros): no later real position reads them.
        tokens = sequence.new_zeros(batch, length, self.n_interests, hidden)
        tokens[sequence_mask] = self.interest_memory(summaries[sequence_mask])[0]
        return tokens

    def last_position_output(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """ELASTIC's ``forward`` through the causal blocks: the last block computes ``item_seq_len - 1`` only."""
        return ELASTIC.forward(self, item_seq, item_seq_len)  # [B H]

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        sequence, sequence_mask = self.embed_sequence(item_seq)
        interests = self.initial_interests(sequence, sequence_mask)
        for block in self.dispatcher_blocks:
            sequence, interests = block(sequence, interests, sequence_mask)
        return sequence  # [B N H]

    # Streaming: fold a user's events into a fixed-size state, one at a time (inference).

    def init_stream_state(self, batch_size: int) -> StreamState:
        """The state of ``batch_size`` users with no events yet."""
        weight = self.item_embedding.weight
        return StreamState(
            length=torch.zeros(batch_size, dtype=torch.long, device=weight.device),
            embedding_sum=weight.new_zeros(batch_size, self.hidden_size),
            running=[block.empty_running_state(batch_size) for block in self.dispatcher_blocks],
            output=weight.new_zeros(batch_size, self.hidden_size),
        )

    @inference
    def stream_update(self, state: StreamState, item_ids: torch.Tensor) -> StreamState:
        """Fold one new event per user (``item_ids`` ``[B]``) into ``state``, without reading the history: the new
        state's ``output`` equals ``forward_all_positions`` at this event's position over the whole history, in
        eval mode. It always runs as inference (eval mode, no gradient), whatever mode the model is in."""
        item = self.embed_at(item_ids, state.length)
        length = state.length + 1
        embedding_sum = state.embedding_sum + item
        if self.use_interest_memory:
            interests = self.interest_memory(embedding_sum / length.unsqueeze(1).to(item.dtype))[0]
        else:
            interests = self.shared_interests.unsqueeze(0).expand(item.size(0), -1, -1)
        running = []
        for block, block_running in zip(self.dispatcher_blocks, state.running):
            item, interests, block_running = block.step(item, interests, block_running, state.length)
            running.append(block_running)
        return StreamState(length=length, embedding_sum=embedding_sum, running=running, output=item)

    @inference
    def stream_scores(self, state: StreamState) -> torch.Tensor:
        """Scores of every item as each user's next event ``[B, n_items]``, from the state alone."""
        return self.score_all_items(state.output)
