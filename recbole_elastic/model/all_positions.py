"""What the plugin's causal models share: a loss over every position of a training window.

A causal model's output at position t depends only on the items up to t, so one pass over a user window
``x_0 .. x_{n-1}`` yields a prediction for every next item ``x_1 .. x_n`` at once. With ``train_all_positions``
(``recbole_elastic.windows``) each training sample is such a window: the input sequence (RecBole's
``item_id_list`` and ``item_length``) and the next item at every position (``target_item_id_list``; 0 at padding
and at positions whose target an earlier window predicts),
plus, for BPR, one sampled negative item per position (``neg_target_item_id_list``).
"""

from typing import Tuple

import torch


def target_sequence_fields(config) -> Tuple[str, str]:
    """The names of a training window's per-position target and negative item fields ``[B, N]``."""
    target = "target_" + config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]
    return target, config["NEG_PREFIX"] + target


class AllPositionsMixin:
    """``calculate_loss`` over every position, for a model that defines ``forward_all_positions``.

    On a batch of windows (it holds the target sequence) the loss is the mean over all targets (non-zero) of the batch
    of the model's ``output_loss`` (CE over all items, BPR against the position's sampled negative, or the sampled
    softmax): the mean of the losses of the prefixes the window holds, each computed once. On RecBole's prefix
    samples (no target sequence) it is the model's own loss at the last position.
    """

    def __init__(self, config, dataset) -> None:
        super().__init__(config, dataset)
        self.TARGET_SEQ, self.NEG_TARGET_SEQ = target_sequence_fields(config)

    def forward_all_positions(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """``[B, N, H]``: the output at every position t, a function of ``item_seq[:, :t + 1]`` only."""
        raise NotImplementedError

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
