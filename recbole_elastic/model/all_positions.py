"""What the plugin's causal models share: a loss over every position of a training window, and the readout.

A causal model's output at position t depends only on the items up to t, so one pass over a user window
``x_0 .. x_{n-1}`` yields a prediction for every next item ``x_1 .. x_n`` at once. With ``train_all_positions``
(``recbole_elastic.windows``) each training sample is such a window: the input sequence (RecBole's
``item_id_list`` and ``item_length``) and the next item at every position (``target_item_id_list``; 0 at padding
and at positions whose target an earlier window predicts),
plus, for BPR, one sampled negative item per position (``neg_target_item_id_list``).

Causality also makes evaluation cheaper: the output after a user's last item does not depend on the padding after
it, so in eval mode the batch is sorted by history length and each group of users is cut to its longest history
(:func:`length_groups`). On ml-1m at N = 1000 (mean history 165) a padded batch holds four times the real
positions (``benchmarks/eval_time.py``).
"""

from typing import List, Tuple

import torch

from recbole_elastic.model.hyperparameters import HyperparameterChecker

# Evaluation's positions per group for a checkpoint saved before ``inference_chunk_positions`` applied to its model.
DEFAULT_INFERENCE_CHUNK_POSITIONS = 32768


def target_sequence_fields(config) -> Tuple[str, str]:
    """The names of a training window's per-position target and negative item fields ``[B, N]``."""
    target = "target_" + config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    return target, config["NEG_PREFIX"] + target


def inference_chunk_positions(config, model_name: str) -> int:
    """``inference_chunk_positions`` of ``model_name``, an integer >= 1 (its default when the config predates it)."""
    if config["inference_chunk_positions"] is None:
        return DEFAULT_INFERENCE_CHUNK_POSITIONS
    checker = HyperparameterChecker(model_name, config)
    checker.require("inference_chunk_positions", checker.is_int("inference_chunk_positions", 1), "an integer >= 1")
    return config["inference_chunk_positions"]


def length_groups(item_seq_len: torch.Tensor, max_positions: int) -> List[Tuple[torch.Tensor, int]]:
    """The rows of a batch in groups for evaluation, longest histories first: each group holds as many rows as fit
    in ``max_positions`` positions at its longest length (its first row), at least one. Returns each group's row
    indices and the length it is cut to (its longest history, at least 1)."""
    order = item_seq_len.argsort(descending=True, stable=True)
    lengths = item_seq_len[order].clamp(min=1).tolist()  # one host copy for the whole batch
    groups, start = [], 0
    while start < len(lengths):
        rows = max(1, max_positions // lengths[start])
        groups.append((order[start : start + rows], lengths[start]))
        start += rows
    return groups


class AllPositionsMixin:
    """``calculate_loss`` over every position, and the last position's output (``forward``), for a model that
    defines ``forward_all_positions``.

    On a batch of windows (it holds the target sequence) the loss is the mean over all targets (non-zero) of the batch
    of the model's ``output_loss`` (CE over all items, BPR against the position's sampled negative, or the sampled
    softmax): the mean of the losses of the prefixes the window holds, each computed once. On RecBole's prefix
    samples (no target sequence) it is the model's own loss at the last position.

    ``forward`` in eval mode (rows independent: no dropout, normalisation on running statistics) encodes the batch
    in :func:`length_groups` of at most ``inference_chunk_positions`` positions, each cut to its longest history:
    the same outputs, at the cost of the real positions rather than ``B * N``, and bounded memory.
    """

    def __init__(self, config, dataset) -> None:
        chunk_positions = inference_chunk_positions(config, type(self).__name__)
        super().__init__(config, dataset)
        self.inference_chunk_positions = chunk_positions
        self.TARGET_SEQ, self.NEG_TARGET_SEQ = target_sequence_fields(config)

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``[B, N, H]``: the output at every position t, a function of ``item_seq[:, :t + 1]`` only."""
        raise NotImplementedError

    def last_position_output(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``[B, H]``: the output at each sequence's last item, ``item_seq_len - 1``, in one pass."""
        return self.gather_indexes(self.forward_all_positions(item_seq, item_seq_len), item_seq_len - 1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        if self.training:  # one pass: dropout masks and any batch statistics see the batch as given
            return self.last_position_output(item_seq, item_seq_len)
        groups = length_groups(item_seq_len, self.inference_chunk_positions)
        outputs = [self.last_position_output(item_seq[rows, :longest], item_seq_len[rows]) for rows, longest in groups]
        output = torch.cat(outputs)  # [B H], rows in group order
        return output[torch.cat([rows for rows, _ in groups]).argsort()]  # back in the batch's order

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.TARGET_SEQ not in interaction:
            return super().calculate_loss(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_output = self.forward_all_positions(item_seq, item_seq_len)  # [B N H]
        targets = interaction[self.TARGET_SEQ]  # [B N]
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        # Padding has no target; a target 0 at a real position is one an earlier window of the user predicts.
        real = (positions.unsqueeze(0) < item_seq_len.unsqueeze(1)) & (targets != 0)  # [B N]
        seq_output = seq_output[real]  # [M H], M targets in the batch
        pos_items = targets[real]  # [M]
        neg_items = interaction[self.NEG_TARGET_SEQ][real] if self.loss_type == "BPR" else None
        return self.output_loss(seq_output, pos_items, neg_items)
