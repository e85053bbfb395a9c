"""The sampled softmax (``loss_type: SampledSoftmax``) against direct computations."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from recbole.data.interaction import Interaction

from recbole_elastic.errors import ConfigError
from recbole_elastic.model import ELASTIC, CausalSASRec, LinRec
from recbole_elastic.model.sampled_softmax import (
    SampledSoftmax,
    negative_log_expected_counts,
    sampled_softmax_loss,
)
from recbole_elastic.standalone import SEQUENTIAL_FIELDS, StandInConfig, StandInDataset, model_defaults

from tests.helpers import build_model, padded_batch


def test_every_item_as_negative_without_correction_is_full_cross_entropy():
    torch.manual_seed(0)
    query, weight = torch.randn(7, 5), torch.randn(12, 5)
    positives = torch.tensor([3, 0, 11, 3, 5, 7, 1])
    loss = sampled_softmax_loss(query, positives, torch.arange(12), weight[positives], weight)
    assert torch.allclose(loss, F.cross_entropy(query @ weight.T, positives), atol=1e-6)


def test_every_real_item_as_negative_is_cross_entropy_without_padding():
    """The module never draws padding (item 0): its limit is CE over items 1..n-1, not the models' CE, whose
    softmax includes padding's logit."""
    torch.manual_seed(0)
    query, weight = torch.randn(7, 5), torch.randn(12, 5)
    positives = torch.tensor([3, 2, 11, 3, 5, 7, 1])
    loss = sampled_softmax_loss(query, positives, torch.arange(1, 12), weight[positives], weight[1:])
    logits = query @ weight.T
    assert torch.allclose(loss, F.cross_entropy(logits[:, 1:], positives - 1), atol=1e-6)
    assert loss < F.cross_entropy(logits, positives) - 1e-3  # padding's term is missing from the softmax


def direct_loss(query, positives, negatives, weight, correction=None):
    """Mean over targets of -log softmax, one target at a time, skipping negatives equal to the positive."""
    correction = correction or (lambda item: 0.0)
    losses = []
    for row, positive in enumerate(positives.tolist()):
        positive_logit = float(query[row] @ weight[positive]) + correction(positive)
        logits = [positive_logit] + [
            float(query[row] @ weight[item]) + correction(item) for item in negatives.tolist() if item != positive
        ]
        losses.append(math.log(sum(math.exp(logit) for logit in logits)) - positive_logit)
    return sum(losses) / len(losses)


def test_accidental_hits_are_masked_and_the_correction_is_added_to_every_candidate():
    torch.manual_seed(1)
    query, weight = torch.randn(4, 3), torch.randn(9, 3)
    positives = torch.tensor([2, 5, 2, 8])
    negatives = torch.tensor([5, 1, 2, 2, 7])  # hits for rows 0, 1 and 2
    offset = torch.tensor([0.0, 0.3, -1.2, 0.7, 0.1, 2.0, -0.4, 0.9, -2.5])  # any per-item correction
    loss = sampled_softmax_loss(
        query, positives, negatives, weight[positives], weight[negatives], offset[positives], offset[negatives]
    )
    expected = direct_loss(query, positives, negatives, weight, lambda item: float(offset[item]))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_log_q_correction_is_the_log_expected_count_of_each_item():
    training_items = torch.tensor([1, 1, 1, 2, 3, 3, 4, 1])  # item 1: half the targets; items 5, 6: none
    sampled = SampledSoftmax(7, training_items, n_uniform=12, in_batch=True, logq_correction=True)
    counts = Counter(training_items.tolist())
    items = torch.tensor([1, 2, 5, 3])
    correction = negative_log_expected_counts(items, sampled.item_share, n_targets=10, n_uniform=12, in_batch=True)
    for item, value in zip(items.tolist(), correction.tolist()):
        # 12 uniform draws over the 6 real items, 10 in-batch draws in proportion to the training targets
        assert value == pytest.approx(-math.log(12 / 6 + 10 * counts[item] / 8), rel=1e-6)
    one_target = SampledSoftmax(4, torch.tensor([2]), n_uniform=1, in_batch=True, logq_correction=True)
    assert one_target.item_share.tolist() == [0.0, 0.0, 1.0, 0.0]  # a share, even of a single target
    uniform_only = negative_log_expected_counts(items, sampled.item_share, 10, 12, in_batch=False)
    assert torch.allclose(uniform_only, torch.full((4,), -math.log(2.0)))


@pytest.mark.parametrize("in_batch", [True, False])
@pytest.mark.parametrize("logq_correction", [True, False])
def test_module_loss_draws_negatives_and_corrects_them(in_batch, logq_correction):
    torch.manual_seed(2)
    n_items = 20
    training_items = torch.randint(1, n_items, (200,))
    sampled = SampledSoftmax(n_items, training_items, n_uniform=6, in_batch=in_batch, logq_correction=logq_correction)
    query, weight = torch.randn(5, 4), torch.randn(n_items, 4)
    positives = torch.tensor([4, 4, 9, 17, 1])

    torch.manual_seed(3)
    looked_up = []
    loss = sampled(query, positives, lambda items: looked_up.append(items) or weight[items])
    torch.manual_seed(3)
    negatives = sampled.draw_negatives(positives)

    assert len(negatives) == 6 + (5 if in_batch else 0)
    assert negatives.min() >= 1  # padding is never a negative
    if in_batch:
        assert negatives[6:].tolist() == positives.tolist()
    assert [items.tolist() for items in looked_up] == [positives.tolist(), negatives.tolist()]  # drawn rows only
    counts = Counter(training_items.tolist())

    def log_q(item):
        expected = 6 / (n_items - 1) + (5 * counts[item] / 200 if in_batch else 0)
        return -math.log(expected) if logq_correction else 0.0

    assert loss.item() == pytest.approx(direct_loss(query, positives, negatives, weight, log_q), rel=1e-5)


def test_uniform_negatives_cover_the_catalogue_without_padding():
    sampled = SampledSoftmax(6, torch.arange(1, 6), n_uniform=3000, in_batch=False, logq_correction=False)
    torch.manual_seed(0)
    counts = Counter(sampled.draw_negatives(torch.tensor([1])).tolist())
    assert set(counts) == {1, 2, 3, 4, 5}
    assert all(abs(count - 600) < 100 for count in counts.values())  # uniform: 600 each, sd about 22


def model_with_targets(model_class, training_items, **overrides):
    """``model_class`` with its YAML defaults on a stand-in dataset whose training targets are ``training_items``."""
    config = StandInConfig({**SEQUENTIAL_FIELDS, **model_defaults(model_class.__name__)})
    config.update({"device": torch.device("cpu"), "MAX_ITEM_LIST_LENGTH": 20, **overrides})
    dataset = StandInDataset(40)
    dataset.inter_feat = {"item_id": training_items}
    return model_class(config, dataset)


@pytest.mark.parametrize("model_class", [ELASTIC, LinRec, CausalSASRec])
@pytest.mark.parametrize("logq_correction", [True, False])
@pytest.mark.parametrize("temperature", [None, 0.05])
def test_model_loss_is_the_sampled_softmax_of_its_output(model_class, logq_correction, temperature):
    torch.manual_seed(0)
    training_items = torch.tensor([6] * 30 + [8] * 5 + list(range(1, 40)))  # item 6 popular: the correction matters
    settings = {"loss_type": "SampledSoftmax", "sampled_negatives": 8, "logq_correction": logq_correction}
    settings["score_temperature"] = temperature
    model = model_with_targets(model_class, training_items, **settings).eval()
    batch = padded_batch([[3, 4, 5], [7], [9, 2, 2, 6]], width=20)
    batch.update(type(batch)({"item_id": torch.tensor([6, 8, 1])}))
    torch.manual_seed(5)
    loss = model.calculate_loss(batch)
    torch.manual_seed(5)
    with torch.no_grad():
        output = model.forward(batch["item_id_list"], batch["item_length"])
    negatives = model.sampled_softmax.draw_negatives(batch["item_id"])
    counts = Counter(training_items.tolist())

    def log_q(item):
        return -math.log(8 / 39 + 3 * counts[item] / len(training_items)) if logq_correction else 0.0

    weight = model.item_embedding.weight.detach()
    if temperature is not None:  # cosine similarity over the temperature
        output, weight = F.normalize(output, dim=-1) / temperature, F.normalize(weight, dim=-1)
    expected = direct_loss(output, batch["item_id"], negatives, weight, log_q)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert "sampled_softmax.item_share" not in model.state_dict()  # checkpoints unchanged


def test_sampled_negatives_must_have_a_source():
    with pytest.raises(ConfigError) as error:
        build_model(ELASTIC, loss_type="SampledSoftmax", sampled_negatives=0, in_batch_negatives=False)
    assert str(error.value) == (
        "ELASTIC hyperparameter `sampled_negatives` = 0 is invalid: it must be an integer >= 1 when "
        "in_batch_negatives is False. Set it in your config file or on the command line (--sampled_negatives=...)."
    )
    with pytest.raises(ConfigError) as error:
        build_model(ELASTIC, loss_type="SampledSoftmax", sampled_negatives=-1)
    assert "`sampled_negatives` = -1 is invalid: it must be an integer >= 0. Set it" in str(error.value)
    with pytest.raises(ConfigError, match="logq_correction"):
        build_model(ELASTIC, loss_type="SampledSoftmax", logq_correction="yes")
    with pytest.raises(ConfigError, match="in_batch_negatives"):
        build_model(ELASTIC, loss_type="SampledSoftmax", in_batch_negatives=1)
    build_model(ELASTIC, loss_type="SampledSoftmax", sampled_negatives=0)  # in-batch negatives alone
    build_model(ELASTIC, loss_type="SampledSoftmax", sampled_negatives=1, in_batch_negatives=False)  # one uniform
    build_model(ELASTIC, loss_type="CE", sampled_negatives=0, in_batch_negatives=False)  # only read when sampled


def test_all_position_loss_scores_every_position_against_the_batch_targets():
    """With in-batch negatives only, the negatives of every position are the targets of all real positions."""
    from tests.model.test_all_positions import WIDTH, window_batch

    torch.manual_seed(0)
    model = build_model(CausalSASRec, max_len=WIDTH, loss_type="SampledSoftmax", sampled_negatives=0).eval()
    # windows as the data loader builds them for losses other than BPR: no negative target field
    batch = Interaction({key: value for key, value in window_batch().interaction.items() if "neg_" not in key})
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        outputs = model.forward_all_positions(batch["item_id_list"], batch["item_length"])  # [B N H]
    real = torch.arange(WIDTH).unsqueeze(0) < batch["item_length"].unsqueeze(1)
    targets = batch["target_item_id_list"][real]
    assert len(targets) == int(batch["item_length"].sum())  # every real position, no padding

    def log_q(item):
        return -math.log(len(targets) / 29)  # the stand-in's training targets: each of the 29 items once

    expected = direct_loss(outputs[real], targets, targets, model.item_embedding.weight, log_q)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
