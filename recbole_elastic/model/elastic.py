"""
ELASTIC
################################################

Reference:
    Chao Deng et al. "ELASTIC: Efficient Linear Attention for SequenTial Interest Compression."
    arXiv 2408.09380, 2024.

Reference:
    Guillaume Lample et al. "Large Memory Layers with Product Keys." NeurIPS 2019 (the interest memory).

The paper publishes no code. Where its method section is silent we chose as follows (each is a
hyperparameter in ``properties/model/ELASTIC.yaml`` where it matters):

* Input: item embedding (padding index 0) + learned absolute position embedding, LayerNorm, dropout (as SASRec).
* Interest Memory Retrieval (IMR): the retrieval query is the masked mean of the non-padding input embeddings,
  passed through a two-layer MLP and (``memory_query_batchnorm``) BatchNorm. There is one product-key retrieval
  head per interest token (``n_interests`` heads), each with its own ``memory_key_dim``-sized query and two
  sub-key tables of ``memory_keys`` rows; head h keeps its ``memory_topk`` best of the ``memory_keys ** 2``
  slots and its interest token is the softmax(score)-weighted sum of their values. Slot values are shared by all
  heads. ``use_interest_memory: False`` replaces IMR by ``n_interests`` learnable tokens shared by all users.
* Training cost of the memory: with ``memory_sparse_updates: False`` the ``memory_keys ** 2`` slot values get a
  dense gradient and the trainer's Adam updates every slot every step: O(memory_keys ** 2 * hidden_size) per step,
  however few slots the batch retrieved. With ``memory_sparse_updates: True`` the gradient holds only the retrieved
  slots and ``recbole_elastic.optim.build_optimizer`` (called by the plugin's trainers, ``trainer.py``) gives the
  slot values lazy Adam: only retrieved slots, their moments and their weight decay are updated, so the step costs
  O(slots retrieved * hidden_size). It differs from dense Adam only for slots retrieved before and not in this
  step: dense Adam keeps moving them by their momentum, lazy Adam leaves them and their moments as they are. All
  other parameters keep RecBole's optimizer (``learner``). See ``ProductKeyInterestMemory``.
* Linear Dispatcher Attention (LDA): ``n_layers`` blocks; each aggregates (interests attend to the sequence,
  padding masked) then dispatches (the sequence attends to the interests). Both stages are multi-head
  (``n_heads``), have separate projections, residual + LayerNorm (post-LN) and a position-wise FFN
  (``inner_size``, ``hidden_act``), with SASRec's dropouts. Interest tokens carry over from block to block.
* Readout: the last block's output at position ``item_seq_len - 1``; that block dispatches only this position.
  Attention is not causal: under RecBole's prefix augmentation each sample holds only the items before its
  target, so nothing leaks. No N x N tensor is ever built.
"""

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from recbole_elastic.model.abstract import DotProductSequentialRecommender
from recbole_elastic.model.hyperparameters import HyperparameterChecker
from recbole_elastic.model.layers import LinearDispatcherBlock, ProductKeyInterestMemory


def check_hyperparameters(config, model_name: str = "ELASTIC") -> None:
    """Raise :class:`ConfigError` naming the first ELASTIC hyperparameter outside its allowed range."""
    checker = HyperparameterChecker(model_name, config)
    checker.require_transformer(extra_int_keys=("n_interests",))
    checker.require_bool("use_interest_memory")
    if config["use_interest_memory"]:
        checker.require(
            "memory_keys", checker.is_int("memory_keys", 1), "an integer >= 1 (the bank holds memory_keys ** 2 slots)"
        )
        checker.require("memory_topk", checker.is_int("memory_topk", 1), "an integer >= 1")
        checker.require(
            "memory_topk",
            config["memory_topk"] <= config["memory_keys"],
            f"<= memory_keys={config['memory_keys']} (top-k is taken over each sub-key table)",
        )
        checker.require(
            "memory_key_dim",
            checker.is_int("memory_key_dim", 2) and config["memory_key_dim"] % 2 == 0,
            "an even integer >= 2 (the query is split in two halves)",
        )
        # None: a checkpoint saved before this key existed, whose memory was dense.
        if config["memory_sparse_updates"] is not None:
            checker.require_bool("memory_sparse_updates")


class ELASTIC(DotProductSequentialRecommender):
    r"""ELASTIC: linear dispatcher attention over interest tokens retrieved from a product-key interest memory.

    See the module docstring for the architecture and every choice the paper leaves open.
    """

    def __init__(self, config, dataset):
        check_hyperparameters(config, type(self).__name__)
        super(ELASTIC, self).__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]  # the dimensionality in feed-forward layer
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.n_interests = config["n_interests"]
        self.use_interest_memory = config["use_interest_memory"]

        # define layers
        if self.use_interest_memory:
            self.interest_memory = ProductKeyInterestMemory(
                hidden_size=self.hidden_size,
                n_heads=self.n_interests,
                n_keys=config["memory_keys"],
                topk=config["memory_topk"],
                key_dim=config["memory_key_dim"],
                query_norm=self.memory_query_norm(config),
                initializer_range=self.initializer_range,
                sparse=bool(config["memory_sparse_updates"]),
            )
        else:
            self.shared_interests = nn.Parameter(torch.empty(self.n_interests, self.hidden_size))

        self.dispatcher_blocks = nn.ModuleList(self.make_dispatcher_block(config) for _ in range(self.n_layers))

        # parameters initialization (the interest memory initialises its own keys and values)
        self.apply(self._init_weights)
        if not self.use_interest_memory:
            nn.init.normal_(self.shared_interests, mean=0.0, std=self.initializer_range)

    def memory_query_norm(self, config) -> str:
        """How retrieval queries are normalised (``layers.QUERY_NORMS``): BatchNorm, as in product-key memories,
        or none (``memory_query_batchnorm``). Each sample is one prefix here, so no row reads another's future."""
        return "batch" if config["memory_query_batchnorm"] else "none"

    def make_dispatcher_block(self, config) -> nn.Module:
        """One LDA block (a subclass may build another kind)."""
        return LinearDispatcherBlock(
            hidden_size=self.hidden_size,
            n_heads=self.n_heads,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )

    def embed_sequence(self, item_seq: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings ``[B, N, H]`` and the mask of real (non-padding) positions ``[B, N]``."""
        sequence_mask = item_seq != 0
        # RecBole left-aligns sequences, so position 0 is real whenever the sequence is not empty; keeping it
        # visible for an empty one avoids an all-masked softmax (NaN).
        sequence_mask[:, 0] = True
        return self.embed_input(item_seq), sequence_mask

    def retrieve_interests(
        self, sequence: torch.Tensor, sequence_mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Initial interest tokens ``[B, k, H]`` and the memory slots they came from ``[B, k, memory_topk]``."""
        mask = sequence_mask.unsqueeze(-1).to(sequence.dtype)
        summary = (sequence * mask).sum(1) / mask.sum(1)
        return self.interest_memory(summary)

    def initial_interests(self, sequence: torch.Tensor, sequence_mask: torch.Tensor) -> torch.Tensor:
        """The k interest tokens ``[B, k, H]`` each user starts the first block with."""
        if self.use_interest_memory:
            return self.retrieve_interests(sequence, sequence_mask)[0]
        return self.shared_interests.unsqueeze(0).expand(sequence.size(0), -1, -1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        sequence, sequence_mask = self.embed_sequence(item_seq)
        interests = self.initial_interests(sequence, sequence_mask)
        readout_index = (item_seq_len - 1).clamp(min=0)
        last = len(self.dispatcher_blocks) - 1
        for i, block in enumerate(self.dispatcher_blocks):
            sequence, interests = block(
                sequence, interests, sequence_mask, readout_index=readout_index if i == last else None
            )
        return sequence.squeeze(1)  # [B H]

    @torch.no_grad()
    def memory_slots(self, interaction) -> torch.Tensor:
        """The interest-memory slots retrieved for each user ``[B, k, memory_topk]`` (for usage statistics)."""
        if not self.use_interest_memory:
            raise ValueError("memory_slots needs use_interest_memory=True")
        sequence, sequence_mask = self.embed_sequence(interaction[self.ITEM_SEQ])
        return self.retrieve_interests(sequence, sequence_mask)[1]

    @torch.no_grad()
    def memory_slot_usage(self, eval_data) -> Optional[Dict[str, Any]]:
        """How many distinct interest-memory slots are retrieved over ``eval_data``'s users (None without a
        memory). A bank whose retrievals collapse onto a few slots is wasted capacity."""
        if not self.use_interest_memory:
            return None
        was_training = self.training
        self.eval()
        counts = torch.zeros(self.interest_memory.n_slots, dtype=torch.long)
        for batch in eval_data:
            interaction = batch[0] if isinstance(batch, tuple) else batch
            slots = self.memory_slots(interaction.to(self.device)).reshape(-1).cpu()
            counts += torch.bincount(slots, minlength=counts.numel())
        self.train(was_training)
        used = int((counts > 0).sum())
        share = counts.float() / counts.sum().clamp(min=1)
        return {
            "distinct_slots": used,
            "total_slots": counts.numel(),
            "fraction_used": used / counts.numel(),
            "top10_share": float(share.topk(min(10, counts.numel())).values.sum()),  # retrievals on the 10 busiest
        }
