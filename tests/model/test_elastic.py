"""ELASTIC's layers and model, without RecBole's data pipeline: dispatch and retrieval against direct
computations, the query BatchNorm, slot statistics, initialisation and hyperparameter checks."""

import copy
import math

import pytest
import torch

from recbole_elastic.model import ELASTIC
from recbole_elastic.model.layers import LinearDispatcherBlock, ProductKeyInterestMemory

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import LargestTensor, assert_rejects_hyperparameter, build_model, padded_batch
from tests.model import reference


def make_block(hidden=16, heads=2, attn_dropout_prob=0.0):
    return LinearDispatcherBlock(hidden, heads, 32, 0.0, attn_dropout_prob, "gelu", 1e-12).eval()


def randomise_biases_and_gains(module):
    """Non-zero biases and non-unit LayerNorm gains, so that none of them drops out of a comparison."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if parameter.dim() == 1:
                parameter.copy_(torch.randn_like(parameter) * 0.3 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
    return module


def block_inputs(lengths=(5, 12, 1), width=12, k=4, hidden=16):
    torch.manual_seed(1)
    sequence = torch.randn(len(lengths), width, hidden)
    interests = torch.randn(len(lengths), k, hidden)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return sequence, interests, mask


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_dispatcher_block_equals_direct_softmax_attention(heads):
    # attention dropout is set: in eval mode it must not apply
    torch.manual_seed(0)
    block = randomise_biases_and_gains(make_block(heads=heads, attn_dropout_prob=0.5))
    sequence, interests, mask = block_inputs()
    expected_sequence, expected_interests = reference.dispatcher_block(block, sequence, interests, mask)
    with torch.no_grad():
        got_sequence, got_interests = block(sequence, interests, mask)
        readout, _ = block(sequence, interests, mask, readout_index=torch.tensor([4, 11, 0]))
    assert torch.allclose(got_interests, expected_interests, atol=1e-5)
    assert torch.allclose(got_sequence, expected_sequence, atol=1e-5)
    assert torch.allclose(readout[:, 0], expected_sequence[torch.arange(3), torch.tensor([4, 11, 0])], atol=1e-5)


def test_dispatch_tells_the_interest_tokens_apart():
    # Moving two interest tokens in opposite directions keeps their mean: a dispatch that attends to each token
    # sees the change, one that collapses them into their mean (or a single token) does not.
    torch.manual_seed(0)
    dispatch = randomise_biases_and_gains(make_block()).dispatch
    sequence, interests, _ = block_inputs()
    shift = torch.randn(3, 16)
    moved = interests.clone()
    moved[:, 0] += shift
    moved[:, 1] -= shift
    with torch.no_grad():
        before = dispatch(sequence, interests)
        after = dispatch(sequence, moved)
        permuted = dispatch(sequence, interests[:, [2, 0, 3, 1]])
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(before, permuted, atol=1e-5)  # attention over a set: the order of the tokens is free


def test_attention_dropout_applies_in_training_mode():
    torch.manual_seed(0)
    block = make_block(attn_dropout_prob=0.5).train()
    sequence, interests, mask = block_inputs()
    with torch.no_grad():
        first = block(sequence, interests, mask)[1]
        second = block(sequence, interests, mask)[1]
    assert not torch.allclose(first, second, atol=1e-3)


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


def make_memory(n_keys=16, topk=4, heads=3, key_dim=8, query_batchnorm=True):
    torch.manual_seed(0)
    return ProductKeyInterestMemory(16, heads, n_keys, topk, key_dim, query_batchnorm, initializer_range=0.02)


def test_product_key_topk_equals_brute_force_over_all_slots():
    memory = make_memory(n_keys=16, topk=4)
    query = torch.randn(5, 3, 8)
    scores, slots = memory.retrieve(query)
    brute_scores, brute_slots = reference.all_slot_scores(memory, query).topk(4, dim=-1)
    assert torch.allclose(scores, brute_scores, atol=1e-5)
    assert torch.equal(slots, brute_slots)


@pytest.mark.parametrize("query_batchnorm", [True, False])
@pytest.mark.parametrize("n_keys, topk", [(16, 4), (5, 5), (7, 1)])
def test_interest_tokens_equal_brute_force_retrieval(query_batchnorm, n_keys, topk):
    # every slot scored, top-k over all n^2 slots, softmax over the k retrieved scores, weighted sum of values
    memory = randomise_biases_and_gains(make_memory(n_keys, topk, query_batchnorm=query_batchnorm)).eval()
    if query_batchnorm:
        memory.query_norm.running_mean.normal_(0.0, 0.1)
        memory.query_norm.running_var.uniform_(0.5, 2.0)
    summary = torch.randn(6, 16)
    expected_tokens, expected_slots = reference.memory_tokens(memory, reference.memory_query(memory, summary))
    with torch.no_grad():
        tokens, slots = memory(summary)
    assert torch.equal(slots, expected_slots)
    assert torch.allclose(tokens, expected_tokens, atol=1e-6)


def test_query_batchnorm_uses_batch_statistics_when_training_on_two_or_more():
    memory = randomise_biases_and_gains(make_memory()).train()
    memory.query_norm.momentum, memory.query_norm.eps = 0.3, 0.5  # not the defaults: make_query must read them
    norm = copy.deepcopy(memory.query_norm)  # nn.BatchNorm1d does what make_query must do
    for batch_size in (2, 5):
        summary = torch.randn(batch_size, 16)
        with torch.no_grad():
            query = memory.make_query(summary)
            expected = norm(memory.query_net(summary)).view(batch_size, 3, 8)
        assert torch.allclose(query, expected, atol=1e-5)
        assert torch.allclose(memory.query_norm.running_mean, norm.running_mean)
        assert torch.allclose(memory.query_norm.running_var, norm.running_var)
    assert not torch.allclose(norm.running_mean, torch.zeros_like(norm.running_mean))  # the statistics moved


def test_query_batchnorm_on_a_training_batch_of_one_uses_the_running_statistics():
    memory = randomise_biases_and_gains(make_memory()).train()
    memory.query_norm.running_mean.normal_(0.0, 0.1)
    running_mean = memory.query_norm.running_mean.clone()
    summary = torch.randn(1, 16)
    with torch.no_grad():
        query = memory.make_query(summary)
    assert torch.allclose(query, reference.memory_query(memory, summary), atol=1e-6)
    assert torch.equal(memory.query_norm.running_mean, running_mean)  # not updated


def test_without_batchnorm_the_query_is_the_mlp_output():
    memory = randomise_biases_and_gains(make_memory(query_batchnorm=False)).train()
    assert memory.query_norm is None
    summary = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.allclose(memory.make_query(summary), reference.memory_query(memory, summary), atol=1e-6)


def test_memory_initialisation():
    torch.manual_seed(0)
    memory = ProductKeyInterestMemory(16, 4, 64, 4, 32, True, initializer_range=0.05)
    assert memory.n_slots == 64 * 64
    assert memory.sub_keys.shape == (4, 2, 64, 16)
    # unit-variance half scores for a unit-variance query: sub-keys of variance 1 / (key_dim / 2)
    assert memory.sub_keys.std().item() == pytest.approx(1 / math.sqrt(16), rel=0.03)
    assert abs(memory.sub_keys.mean().item()) < 0.01
    assert memory.values.weight.shape == (64 * 64, 16)
    assert memory.values.weight.std().item() == pytest.approx(0.05, rel=0.03)
    assert abs(memory.values.weight.mean().item()) < 0.002
    assert memory.query_norm.num_features == 4 * 32


def test_memory_settings_reach_the_memory():
    memory = build_model(ELASTIC, n_interests=3, memory_keys=5, memory_topk=2, memory_key_dim=6).interest_memory
    assert (memory.n_heads, memory.n_keys, memory.topk, memory.key_dim) == (3, 5, 2, 6)
    assert isinstance(memory.query_norm, torch.nn.BatchNorm1d)
    assert build_model(ELASTIC, memory_query_batchnorm=False).interest_memory.query_norm is None


def test_shared_interests_initialisation():
    torch.manual_seed(0)
    model = build_model(ELASTIC, use_interest_memory=False, n_interests=64, initializer_range=0.05)
    assert model.shared_interests.shape == (64, 64)
    assert model.shared_interests.std().item() == pytest.approx(0.05, rel=0.05)
    assert abs(model.shared_interests.mean().item()) < 0.005
    assert not hasattr(model, "interest_memory")


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


def usage_batches():
    """Four small test batches, as a RecBole full-sort loader yields them (tuples) and as plain interactions."""
    torch.manual_seed(3)
    sequences = [torch.randint(1, 30, (n,)).tolist() for n in (1, 4, 7, 9, 2, 6, 8, 3, 5, 10, 4, 6)]
    batches = [padded_batch(sequences[i : i + 3], 10) for i in range(0, 12, 3)]
    return [(batch, None, None, None) if i % 2 else batch for i, batch in enumerate(batches)]


def test_memory_slot_usage_counts_every_retrieved_slot():
    torch.manual_seed(0)
    model = build_model(ELASTIC, memory_keys=4, memory_topk=2, n_interests=3).train()
    batches = usage_batches()
    model.eval()
    counts = torch.zeros(16, dtype=torch.long)
    for batch in batches:
        interaction = batch[0] if isinstance(batch, tuple) else batch
        slots = reference.elastic_retrieval(model, interaction["item_id_list"])[3]
        counts += torch.bincount(slots.flatten(), minlength=16)
    model.train()
    usage = model.memory_slot_usage(batches)
    assert model.training  # the mode it was called in is restored
    assert counts.sum() == 12 * 3 * 2  # users x interest tokens x slots each
    share = sorted((counts.float() / counts.sum()).tolist(), reverse=True)
    assert usage == {
        "distinct_slots": int((counts > 0).sum()),
        "total_slots": 16,
        "fraction_used": int((counts > 0).sum()) / 16,
        "top10_share": pytest.approx(sum(share[:10])),
    }
    assert 10 < usage["distinct_slots"] < 16  # so the top-10 share leaves some out
    model.eval()
    model.memory_slot_usage(batches)
    assert not model.training


def test_memory_slot_usage_on_a_single_retrieval_and_on_no_data():
    torch.manual_seed(0)
    model = build_model(ELASTIC, memory_keys=3, memory_topk=1, n_interests=1)
    usage = model.memory_slot_usage([padded_batch([[4, 5]], 10)])
    assert usage == {"distinct_slots": 1, "total_slots": 9, "fraction_used": 1 / 9, "top10_share": 1.0}
    empty = model.memory_slot_usage([])
    assert empty == {"distinct_slots": 0, "total_slots": 9, "fraction_used": 0.0, "top10_share": 0.0}


def test_memory_slots_equal_the_slots_of_the_retrieval():
    torch.manual_seed(0)
    model = build_model(ELASTIC).eval()
    batch = padded_batch(SEQUENCES, 10)
    expected = reference.elastic_retrieval(model, batch["item_id_list"])[3]
    slots = model.memory_slots(batch)
    assert slots.shape == (4, 8, 8) and torch.equal(slots, expected)


def test_without_memory_there_are_no_slots():
    model = build_model(ELASTIC, use_interest_memory=False)
    assert model.memory_slot_usage([padded_batch(SEQUENCES, 10)]) is None
    with pytest.raises(ValueError, match="memory_slots needs use_interest_memory=True"):
        model.memory_slots(padded_batch(SEQUENCES, 10))


def test_an_empty_sequence_gives_finite_scores():
    # position 0 stays visible to attention even for an empty sequence (no all-masked softmax)
    model = build_model(ELASTIC).eval()
    with torch.no_grad():
        scores = model.full_sort_predict(padded_batch([[], [3, 4]], 10))
        one = model.full_sort_predict(padded_batch([[3, 4]], 10))
    assert torch.isfinite(scores).all()
    assert torch.allclose(scores[1], one[0], atol=1e-5)


def test_empty_sequence_reads_position_zero():
    model = build_model(ELASTIC).eval()
    batch = padded_batch([[]], 10)
    expected = reference.elastic_all_positions(model, batch["item_id_list"])[:, 0]
    with torch.no_grad():
        assert torch.allclose(model.forward(batch["item_id_list"], batch["item_length"]), expected, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("n_interests", 0, "an integer >= 1"),
        ("memory_keys", 0, "an integer >= 1 (the bank holds memory_keys ** 2 slots)"),
        ("memory_keys", 8.0, "an integer >= 1 (the bank holds memory_keys ** 2 slots)"),
        ("memory_topk", 0, "an integer >= 1"),
        ("memory_topk", 65, "<= memory_keys=64 (top-k is taken over each sub-key table)"),
        ("memory_key_dim", 7, "an even integer >= 2 (the query is split in two halves)"),
        ("memory_key_dim", 0, "an even integer >= 2 (the query is split in two halves)"),
        ("use_interest_memory", "yes", "True or False"),
    ],
)
def test_bad_memory_hyperparameter_names_the_key(key, value, allowed):
    assert_rejects_hyperparameter(ELASTIC, {key: value}, key, allowed)


def test_memory_hyperparameters_are_not_checked_without_the_memory():
    build_model(ELASTIC, use_interest_memory=False, memory_keys=0, memory_topk=5, memory_key_dim=7)


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_interests": 1, "memory_keys": 1, "memory_topk": 1, "memory_key_dim": 2},
        {"memory_keys": 8, "memory_topk": 8},
    ],
)
def test_smallest_valid_memory_is_accepted(overrides):
    torch.manual_seed(0)
    model = build_model(ELASTIC, **overrides).eval()
    with torch.no_grad():
        scores = model.full_sort_predict(padded_batch(SEQUENCES, 10))
    assert torch.isfinite(scores).all()
