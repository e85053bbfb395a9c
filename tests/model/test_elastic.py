"""ELASTIC's layers and model, without RecBole's data pipeline."""

import pytest
import torch

from recbole_elastic.errors import ConfigError
from recbole_elastic.model import ELASTIC
from recbole_elastic.model.layers import LinearDispatcherBlock, ProductKeyInterestMemory

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import LargestTensor, build_model, padded_batch, scores_at_two_paddings


@pytest.mark.parametrize("use_interest_memory", [True, False])
def test_more_right_padding_gives_the_same_scores(use_interest_memory):
    torch.manual_seed(0)
    narrow, wide = scores_at_two_paddings(build_model(ELASTIC, use_interest_memory=use_interest_memory))
    assert torch.allclose(narrow, wide, atol=1e-5)


def make_block(hidden=16, heads=2):
    return LinearDispatcherBlock(hidden, heads, 32, 0.0, 0.0, "gelu", 1e-12).eval()


def test_aggregate_ignores_padded_positions():
    torch.manual_seed(0)
    block = make_block()
    sequence = torch.randn(3, 12, 16)
    interests = torch.randn(3, 4, 16)
    mask = torch.arange(12).unsqueeze(0) < torch.tensor([[5], [12], [1]])
    changed = sequence.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    with torch.no_grad():
        _, interests_before = block(sequence, interests, mask)
        _, interests_after = block(changed, interests, mask)
    assert torch.allclose(interests_before, interests_after, atol=1e-5)
    # and the mask matters: without it the garbage changes the interests
    with torch.no_grad():
        _, unmasked = block(changed, interests, torch.ones_like(mask))
    assert not torch.allclose(interests_before, unmasked, atol=1e-3)


def test_readout_only_dispatch_equals_full_dispatch_at_the_readout():
    torch.manual_seed(0)
    block = make_block()
    sequence = torch.randn(3, 12, 16)
    interests = torch.randn(3, 4, 16)
    lengths = torch.tensor([5, 12, 1])
    mask = torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)
    with torch.no_grad():
        full_sequence, full_interests = block(sequence, interests, mask)
        readout, readout_interests = block(sequence, interests, mask, readout_index=lengths - 1)
    assert readout.shape == (3, 1, 16)
    assert torch.allclose(readout[:, 0], full_sequence[torch.arange(3), lengths - 1], atol=1e-5)
    assert torch.allclose(readout_interests, full_interests)


def make_memory(n_keys=16, topk=4, heads=3, key_dim=8):
    torch.manual_seed(0)
    return ProductKeyInterestMemory(16, heads, n_keys, topk, key_dim, query_batchnorm=True, initializer_range=0.02)


def test_product_key_topk_equals_brute_force_over_all_slots():
    memory = make_memory(n_keys=16, topk=4)
    query = torch.randn(5, 3, 8)
    scores, slots = memory.retrieve(query)
    half = 4
    # score of slot (i, j) is q1 . k1_i + q2 . k2_j, for all n^2 slots
    first = torch.einsum("bhd,hnd->bhn", query[..., :half], memory.sub_keys[:, 0])
    second = torch.einsum("bhd,hnd->bhn", query[..., half:], memory.sub_keys[:, 1])
    all_slots = (first[..., :, None] + second[..., None, :]).flatten(2)  # [B, heads, n*n]
    brute_scores, brute_slots = all_slots.topk(4, dim=-1)
    assert torch.allclose(scores, brute_scores, atol=1e-5)
    assert torch.equal(slots, brute_slots)


def test_retrieval_cost_grows_with_n_not_n_squared():
    largest = {}
    for n_keys in (64, 512):
        memory = make_memory(n_keys=n_keys, topk=4, heads=2).eval()
        summary = torch.randn(4, 16)
        with torch.no_grad(), LargestTensor() as probe:
            memory(summary)
        largest[n_keys] = probe.largest
    # every intermediate is O(batch * heads * n), never O(n^2) = 262,144 slots
    assert largest[512] < 512 * 512 / 8
    assert largest[512] <= 8 * largest[64] + 64


def test_gradients_reach_memory_keys_and_values():
    memory = make_memory().train()
    tokens, slots = memory(torch.randn(6, 16))
    tokens.pow(2).sum().backward()
    assert memory.sub_keys.grad is not None and memory.sub_keys.grad.abs().sum() > 0
    value_grad = memory.values.weight.grad
    used = torch.unique(slots)
    assert value_grad[used].abs().sum() > 0
    unused = torch.ones(memory.n_slots, dtype=torch.bool)
    unused[used] = False
    assert value_grad[unused].abs().sum() == 0  # only retrieved slots learn


def test_model_gradients_reach_the_interest_memory():
    torch.manual_seed(0)
    model = build_model(ELASTIC).train()
    batch = padded_batch(SEQUENCES, 10)
    batch.interaction["item_id"] = torch.tensor([1, 2, 3, 4])
    model.calculate_loss(batch).backward()
    assert model.interest_memory.sub_keys.grad.abs().sum() > 0
    assert model.interest_memory.values.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("n_interests", 0, "an integer >= 1"),
        ("memory_keys", 0, "an integer >= 1"),
        ("memory_topk", 100, "<= memory_keys"),
        ("memory_key_dim", 7, "even integer"),
        ("use_interest_memory", "yes", "True or False"),
    ],
)
def test_bad_memory_hyperparameter_names_the_key(key, value, fragment):
    with pytest.raises(ConfigError) as error:
        build_model(ELASTIC, **{key: value})
    message = str(error.value)
    assert "ELASTIC" in message and f"`{key}`" in message and fragment in message
