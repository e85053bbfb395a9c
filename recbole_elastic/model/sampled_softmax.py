"""Sampled softmax for large catalogues (``loss_type: SampledSoftmax``).

Full CE scores every item for every training target: ``[targets, n_items]`` logits per batch, 1.27 GB at
RecBole's batch of 2,048 on amazon-books' 155,749 items, and most of a step's time. The sampled softmax scores
each target against its positive item and one shared set of negatives per batch instead:

* ``sampled_negatives`` items drawn uniformly (with replacement) from the catalogue, shared by every target;
* with ``in_batch_negatives``, the batch's other targets' positive items (items are drawn in proportion to how
  often they are targets: popular items are over-represented);
* with ``logq_correction``, every candidate's logit (the positive's too) minus the log of its expected count among
  the negatives, ``log(sampled_negatives / (n_items - 1) + targets * p(item))``, with ``p`` the item's share of
  the training targets. This removes the sampling bias, so the loss estimates full CE's ranking over all items
  (Bengio and Senecal 2008; Yi et al. "Sampling-Bias-Corrected Neural Modeling", RecSys 2019).

A negative equal to the target's positive item (an "accidental hit") is masked out. Negatives are drawn from the
real items 1 .. n_items - 1, never padding: with every real item as a negative and no correction the loss is CE
over the real items, which differs from the models' full CE (over all n_items logits) by padding's term in the
softmax. :func:`sampled_softmax_loss` given every item, padding included, as negatives is full CE exactly.
Evaluation always ranks the full catalogue.
"""

from typing import Callable, Optional

import torch
import torch.nn.functional as F

SAMPLED_SOFTMAX = "SampledSoftmax"  # the loss_type


def item_target_counts(item_ids: torch.Tensor, n_items: int) -> torch.Tensor:
    """``[n_items]`` float: how often each item is a training target (``item_ids``: the training split's items)."""
    return torch.bincount(item_ids.reshape(-1).long(), minlength=n_items).float()


def negative_log_expected_counts(
    items: torch.Tensor,
    item_share: torch.Tensor,
    n_targets: int,
    n_uniform: int,
    in_batch: bool,
) -> torch.Tensor:
    """``-log`` of each item's expected count among one batch's negatives: the log-q correction of ``items``.

    ``item_share`` ``[n_items]``: each item's share of the training targets (sums to 1), the chance an in-batch
    negative is that item; ``n_items - 1`` real items (0 is padding) share the ``n_uniform`` uniform draws.
    """
    expected = torch.full_like(item_share[items], n_uniform / (item_share.numel() - 1))
    if in_batch:
        expected = expected + n_targets * item_share[items]
    return -torch.log(expected.clamp_min(torch.finfo(expected.dtype).tiny))  # an item never drawn: finite


def sampled_softmax_loss(
    query: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    positive_vectors: torch.Tensor,
    negative_vectors: torch.Tensor,
    positive_correction: Optional[torch.Tensor] = None,
    negative_correction: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean over targets of ``-log softmax`` of each positive among itself and the shared negatives.

    Args:
        query: ``[M, H]``, the model's output for each of M targets.
        positives: ``[M]``, each target's item.
        negatives: ``[K]``, negative items shared by all targets.
        positive_vectors, negative_vectors: ``[M, H]`` and ``[K, H]``, the item side of the positives' and the
            negatives' scores (scores are dot products with ``query``).
        positive_correction, negative_correction: ``[M]`` and ``[K]``, added to the logits (the log-q
            correction), or None.
    """
    positive_logits = torch.sum(query * positive_vectors, dim=-1, keepdim=True)  # [M 1]
    negative_logits = query @ negative_vectors.t()  # [M K]
    if positive_correction is not None:
        positive_logits = positive_logits + positive_correction.unsqueeze(1)
        negative_logits = negative_logits + negative_correction.unsqueeze(0)
    accidental_hit = negatives.unsqueeze(0) == positives.unsqueeze(1)  # [M K]: the positive is not its own negative
    negative_logits = negative_logits.masked_fill(accidental_hit, float("-inf"))
    logits = torch.cat([positive_logits, negative_logits], dim=1)  # [M 1+K]; the positive is class 0
    return F.cross_entropy(logits, torch.zeros(len(positives), dtype=torch.long, device=logits.device))


class SampledSoftmax(torch.nn.Module):
    """The sampled softmax of a model: draws one batch's negatives and applies the loss (see the module docstring).

    Holds each item's share of the training targets (for the log-q correction) as a non-persistent buffer:
    checkpoints are unchanged, and the share is recomputed from the training data when the model is built.
    """

    def __init__(
        self,
        n_items: int,
        training_items: torch.Tensor,
        n_uniform: int,
        in_batch: bool,
        logq_correction: bool,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.n_uniform = n_uniform
        self.in_batch = in_batch
        self.logq_correction = logq_correction
        counts = item_target_counts(training_items, n_items)
        counts[0] = 0  # padding is never a target
        self.register_buffer("item_share", counts / counts.sum().clamp_min(1), persistent=False)

    def draw_negatives(self, positives: torch.Tensor) -> torch.Tensor:
        """``[K]``: ``n_uniform`` uniform items (never padding), then the batch's positives if ``in_batch``."""
        uniform = torch.randint(1, self.n_items, (self.n_uniform,), device=positives.device)
        return torch.cat([uniform, positives]) if self.in_batch else uniform

    def forward(
        self, query: torch.Tensor, positives: torch.Tensor, item_vectors: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """The loss of ``query`` ``[M, H]`` for targets ``positives`` ``[M]`` against freshly drawn negatives.

        ``item_vectors`` maps item ids to the item side of the scores (the model's :meth:`item_vectors`): only the
        drawn rows are looked up, never the whole ``[n_items, H]`` table."""
        negatives = self.draw_negatives(positives)
        positive_correction = negative_correction = None
        if self.logq_correction:
            correction = [len(positives), self.n_uniform, self.in_batch]
            positive_correction = negative_log_expected_counts(positives, self.item_share, *correction)
            negative_correction = negative_log_expected_counts(negatives, self.item_share, *correction)
        return sampled_softmax_loss(
            query,
            positives,
            negatives,
            item_vectors(positives),
            item_vectors(negatives),
            positive_correction,
            negative_correction,
        )
