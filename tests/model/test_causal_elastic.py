"""CausalELASTIC: the output at position t depends on the items up to t only, at O(N * k) cost."""

import pytest
import torch
import torch.nn.functional as F

from recbole_elastic.model import ELASTIC, CausalELASTIC
from recbole_elastic.model.causal_layers import CausalDispatcherBlock, PrefixAggregation, prefix_softmax_attention

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import (
    LargestTensor,
    assert_rejects_hyperparameter,
    build_model,
    padded_batch,
    randomise_biases_and_gains,
)
from tests.model import reference

SMALL = {"hidden_size": 16, "inner_size": 32, "n_interests": 4, "memory_keys": 8, "memory_topk": 2, "memory_key_dim": 8}


def all_positions(model, sequences, width):
    batch = padded_batch(sequences, width)
    with torch.no_grad():
        return model.forward_all_positions(batch["item_id_list"], batch["item_length"])


def randomise_recency_slopes(model):
    """Every block's recency slopes different per head and query (their initial values repeat over heads)."""
    with torch.no_grad():
        for block in model.dispatcher_blocks:
            block.aggregate.recency_slopes.uniform_(-0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "use_interest_memory, interest_ffn, recency_bias, query_norm",
    [
        (True, True, False, "layer"),
        (True, True, False, "running"),
        (True, False, False, "layer"),
        (False, True, False, "layer"),
        (False, False, False, "layer"),
        (True, True, True, "layer"),
    ],
)
def test_every_position_and_the_readout_equal_the_direct_computation(
    use_interest_memory, interest_ffn, recency_bias, query_norm
):
    # reference.causal_elastic_all_positions: one ordinary softmax per prefix, the memory scored over all slots
    torch.manual_seed(0)
    model = build_model(
        CausalELASTIC,
        max_len=10,
        memory_query_norm=query_norm,
        causal_chunk_size=3,
        use_interest_memory=use_interest_memory,
        causal_interest_ffn=interest_ffn,
        causal_recency_bias=recency_bias,
    )
    model = randomise_biases_and_gains(model)
    if recency_bias:
        model = randomise_recency_slopes(model)
    batch = padded_batch(SEQUENCES, 10)
    lengths = batch["item_length"]
    with torch.no_grad():
        expected = reference.causal_elastic_all_positions(model, batch["item_id_list"], interest_ffn)
        every = model.forward_all_positions(batch["item_id_list"], lengths)
        readout = model.forward(batch["item_id_list"], lengths)
    real = batch["item_id_list"] > 0
    assert torch.allclose(every[real], expected[real], atol=1e-5)
    assert not every[~real].any()  # padded positions are not computed (no real position reads them)
    assert torch.allclose(readout, expected[torch.arange(len(SEQUENCES)), lengths - 1], atol=1e-5)


@pytest.mark.parametrize("recency_bias", [False, True])
def test_the_readout_sees_only_the_items_up_to_it_when_later_items_follow(recency_bias):
    # forward reads position item_seq_len - 1 of the causal model, whatever follows it: the last block's aggregate
    # must hide the later positions, not only padding.
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=10, causal_chunk_size=4, causal_recency_bias=recency_bias)
    model = randomise_biases_and_gains(model)
    if recency_bias:
        model = randomise_recency_slopes(model)
    item_seq = torch.randint(1, 30, (4, 10), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([1, 4, 7, 10])
    with torch.no_grad():
        expected = reference.causal_elastic_all_positions(model, item_seq)[torch.arange(4), lengths - 1]
        readout = model.forward(item_seq, lengths)
    assert torch.allclose(readout, expected, atol=1e-5)


@pytest.mark.parametrize("chunk_positions", [1, 10, 25, 10_000])
def test_evaluation_in_chunks_of_positions_gives_the_one_pass_scores(chunk_positions):
    # 1 and 10 positions: one user per chunk (N = 10); 25: chunks of 2 users and a last one of 1; 10,000: one pass.
    torch.manual_seed(0)
    model = randomise_biases_and_gains(
        build_model(CausalELASTIC, max_len=10, inference_chunk_positions=chunk_positions)
    )
    item_seq = torch.randint(1, 30, (5, 10), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([1, 4, 7, 10, 3])
    with torch.no_grad():
        expected = reference.causal_elastic_all_positions(model, item_seq)[torch.arange(5), lengths - 1]
        assert torch.allclose(model.forward(item_seq, lengths), expected, atol=1e-5)


def test_evaluation_memory_is_bounded_by_the_chunk_and_training_is_one_pass():
    # Eval mode: with 2 users' positions per chunk the largest tensor is a fifth of the one-pass size (10 users);
    # training mode keeps one pass (chunks would change BatchNorm's batch statistics).
    torch.manual_seed(0)
    item_seq = torch.randint(1, 30, (10, 10), generator=torch.Generator().manual_seed(0))
    lengths = torch.full((10,), 10)
    largest = {}
    for chunk_positions, training in ((20, False), (100, False), (20, True)):
        model = build_model(CausalELASTIC, max_len=10, inference_chunk_positions=chunk_positions).train(training)
        with torch.no_grad(), LargestTensor() as probe:
            model.forward(item_seq, lengths)
        largest[chunk_positions, training] = probe.largest
    assert largest[100, False] == largest[20, True] == 5 * largest[20, False]


def block_inputs(lengths=(6, 9), k=3, hidden=16):
    torch.manual_seed(1)
    width = max(lengths)
    queries = torch.randn(k, hidden)
    interests = torch.randn(len(lengths), width, k, hidden)
    sequence = torch.randn(len(lengths), width, hidden)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return queries, interests, sequence, mask, torch.tensor(lengths) - 1


def test_a_causal_block_equals_the_direct_computation_with_its_interest_ffn_by_default():
    torch.manual_seed(0)
    # interest_ffn left out: its default is True
    block = CausalDispatcherBlock(16, 2, 3, 32, 0.0, 0.0, "gelu", 1e-12, chunk_size=4, initializer_range=0.02)
    block = randomise_biases_and_gains(block)
    _, interests, sequence, mask, readout_index = block_inputs()
    with torch.no_grad():
        expected_sequence, expected_interests = reference.causal_dispatcher_block(block, sequence, interests, mask)
        got_sequence, got_interests = block(sequence, interests, mask)
        readout, readout_interests = block(sequence, interests, mask, readout_index=readout_index)
    assert torch.allclose(got_interests[mask], expected_interests[mask], atol=1e-5)
    assert torch.allclose(got_sequence[mask], expected_sequence[mask], atol=1e-5)
    assert not got_sequence[~mask].any() and not got_interests[~mask].any()  # padding: not computed
    assert mask.any(1).all() and not mask.all()  # both kinds of position are checked
    rows = torch.arange(2)
    assert torch.allclose(readout[:, 0], expected_sequence[rows, readout_index], atol=1e-5)
    assert torch.allclose(readout_interests, expected_interests[rows, readout_index], atol=1e-5)


def test_aggregate_attention_dropout_scales_each_keys_weight_in_training_mode():
    # In training mode each (user, head, query, key) weight is kept with probability 1 - p and scaled by
    # 1 / (1 - p), at every position after the key and at the readout alike; the normaliser is unchanged.
    torch.manual_seed(0)
    aggregate = PrefixAggregation(16, 2, 0.0, 0.3, 1e-12, chunk_size=4)
    aggregate = randomise_biases_and_gains(aggregate).train()
    queries, interests, sequence, mask, readout_index = block_inputs()
    rows = torch.arange(2)
    with torch.no_grad():
        torch.manual_seed(1)
        got = aggregate(queries, interests, sequence, mask)
        torch.manual_seed(1)
        readout = aggregate(queries, interests[rows, readout_index], sequence, mask, readout_index=readout_index)
        torch.manual_seed(1)
        keep = F.dropout(torch.ones(2, 2, 3, 9), 0.3)  # the aggregate's one random draw, repeated
        expected = reference.causal_aggregate(aggregate, queries, interests, sequence, mask, keep)
        without_dropout = reference.causal_aggregate(aggregate, queries, interests, sequence, mask)
    assert (keep == 0).any()
    assert not torch.allclose(expected, without_dropout, atol=1e-3)  # the test means something
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(readout, expected[rows, readout_index], atol=1e-5)


def test_recency_slopes_start_geometric_and_learn():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=10, n_interests=4, causal_recency_bias=True).train()
    for block in model.dispatcher_blocks:
        assert torch.equal(block.aggregate.recency_slopes, torch.tensor([[1.0, 0.5, 0.25, 0.125]] * 2))
    batch = padded_batch(SEQUENCES, 10)
    batch.interaction["item_id"] = torch.tensor([1, 2, 3, 4])
    model.calculate_loss(batch).backward()
    for block in model.dispatcher_blocks:
        assert block.aggregate.recency_slopes.grad.abs().min() > 0
    assert build_model(CausalELASTIC).dispatcher_blocks[0].aggregate.recency_slopes is None  # off by default


def test_a_large_recency_slope_reads_the_last_item_only():
    # With one query per head and a slope of 60, position t's aggregate is (almost) the value of item t alone.
    torch.manual_seed(0)
    aggregate = PrefixAggregation(16, 2, 0.0, 0.0, 1e-12, chunk_size=3, n_recency_queries=1).eval()
    with torch.no_grad():
        aggregate.recency_slopes.fill_(60.0)
    sequence = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        updated = aggregate(torch.randn(1, 16), torch.zeros(2, 7, 1, 16), sequence, mask)
        last_only = aggregate.LayerNorm(aggregate.dense(aggregate.value(sequence))).unsqueeze(2)
    assert torch.allclose(updated, last_only, atol=1e-4)


def test_interest_queries_initialisation():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, initializer_range=0.05)
    queries = torch.cat([block.interest_queries.detach().flatten() for block in model.dispatcher_blocks])
    assert queries.numel() == 2 * 8 * 64  # n_layers x n_interests x hidden_size draws of N(0, initializer_range)
    assert queries.std().item() == pytest.approx(0.05, rel=0.1)
    assert abs(queries.mean().item()) < 0.01


@pytest.mark.parametrize("use_interest_memory", [True, False])
def test_position_t_equals_the_history_truncated_at_t(use_interest_memory):
    torch.manual_seed(0)
    # chunks of 4 positions: the 9-item sequence crosses two chunk boundaries
    model = build_model(CausalELASTIC, max_len=16, causal_chunk_size=4, use_interest_memory=use_interest_memory)
    model.eval()
    full = all_positions(model, SEQUENCES, 16)
    cases = [(row, t) for row, items in enumerate(SEQUENCES) for t in range(len(items))]
    padded = all_positions(model, [SEQUENCES[row][: t + 1] for row, t in cases], 11)  # padding after each history
    for case, (row, t) in enumerate(cases):
        assert torch.allclose(full[row, t], padded[case, t], atol=1e-5), (row, t)
    for t in range(max(map(len, SEQUENCES))):  # no padding at all
        rows = [row for row, items in enumerate(SEQUENCES) if len(items) > t]
        alone = all_positions(model, [SEQUENCES[row][: t + 1] for row in rows], t + 1)[:, t]
        assert torch.allclose(full[rows, t], alone, atol=1e-5), t


def test_later_items_change_nothing_before_them_and_earlier_items_do():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=12, causal_chunk_size=3).eval()
    items = [1, 2, 3, 4, 5, 6, 7, 8]
    base = all_positions(model, [items], 12)[0]
    later = all_positions(model, [items[:5] + [20, 21, 22]], 12)[0]
    earlier = all_positions(model, [[9] + items[1:]], 12)[0]
    assert torch.allclose(base[:5], later[:5], atol=1e-5)
    assert not torch.allclose(base[5:8], later[5:8], atol=1e-3)
    assert not torch.allclose(base[7], earlier[7], atol=1e-3)  # the first item still reaches the last position


def test_readout_equals_every_position_output_at_the_last_item():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=12, causal_chunk_size=4).eval()
    batch = padded_batch(SEQUENCES, 12)
    lengths = batch["item_length"]
    with torch.no_grad():
        readout = model.forward(batch["item_id_list"], lengths)
        every = model.forward_all_positions(batch["item_id_list"], lengths)
    assert torch.allclose(readout, every[torch.arange(len(SEQUENCES)), lengths - 1], atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunk_size_changes_nothing(chunk_size):
    torch.manual_seed(0)
    reference = build_model(CausalELASTIC, max_len=12, causal_chunk_size=5).eval()
    other = build_model(CausalELASTIC, max_len=12, causal_chunk_size=chunk_size).eval()
    other.load_state_dict(reference.state_dict())
    assert torch.allclose(all_positions(reference, SEQUENCES, 12), all_positions(other, SEQUENCES, 12), atol=1e-5)


def test_prefix_softmax_attention_equals_masked_softmax_at_every_prefix():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, 11) * 30  # large scores: the running max must keep exp finite
    scores[1, :, :, 7:] = float("-inf")  # padding
    values = torch.randn(2, 3, 11, 5)
    out = prefix_softmax_attention(scores, values, chunk_size=4)
    for t in range(11):
        expected = torch.softmax(scores[..., : t + 1], dim=-1) @ values[:, :, : t + 1]
        assert torch.allclose(out[..., t, :], expected, atol=1e-5), t


def test_prefix_softmax_attention_gradients_are_finite_with_padding():
    scores = (torch.randn(1, 1, 2, 9) * 50).requires_grad_()
    values = torch.randn(1, 1, 9, 4, requires_grad=True)
    masked = scores.masked_fill(torch.arange(9) >= 6, float("-inf"))
    prefix_softmax_attention(masked, values, chunk_size=4).sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(values.grad).all()
    assert (scores.grad[..., 6:] == 0).all()


def largest_tensor(model, width):
    batch = padded_batch([(list(range(1, 29)) * (width // 28 + 1))[:width]], width)
    with torch.no_grad(), LargestTensor() as probe:
        model.forward_all_positions(batch["item_id_list"], batch["item_length"])
    return probe.largest


def test_no_n_by_n_tensor_and_memory_linear_in_n():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, n_items=30, max_len=1024, causal_chunk_size=16, **SMALL).eval()
    small, large = largest_tensor(model, 512), largest_tensor(model, 1024)
    assert large < 1024 * 1024 / 4  # the largest is the [N, k, inner_size] FFN activation, far below N^2
    assert large <= 2.1 * small  # doubling N doubles the largest tensor: nothing grows as N^2


def test_training_gradients_reach_memory_queries_and_every_block():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=10).train()
    batch = padded_batch(SEQUENCES, 10)
    batch.interaction["item_id"] = torch.tensor([1, 2, 3, 4])
    model.calculate_loss(batch).backward()
    value_grad = model.interest_memory.values.weight.grad  # sparse: the YAML trains memory values sparsely
    assert value_grad.is_sparse and value_grad.coalesce().values().abs().sum() > 0
    for block in model.dispatcher_blocks:
        assert block.interest_queries.grad.abs().sum() > 0
    grads = [
        p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in model.parameters() if p.grad is not None
    ]
    assert all(torch.isfinite(grad).all() for grad in grads)


def test_last_position_retrieves_what_elastic_retrieves():
    # The retrieval query at the last position is ELASTIC's (the mean of the whole sequence).
    torch.manual_seed(0)
    elastic = build_model(ELASTIC, max_len=10).eval()
    # "running": BatchNorm on its running statistics, as ELASTIC's in eval mode
    causal = build_model(CausalELASTIC, max_len=10, memory_query_norm="running").eval()
    causal.interest_memory.load_state_dict(elastic.interest_memory.state_dict())
    causal.item_embedding.load_state_dict(elastic.item_embedding.state_dict())
    causal.position_embedding.load_state_dict(elastic.position_embedding.state_dict())
    batch = padded_batch(SEQUENCES, 10)
    assert torch.equal(elastic.memory_slots(batch), causal.memory_slots(batch))


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("n_layers", 0, "an integer >= 1"),
        ("memory_topk", 65, "<= memory_keys=64 (top-k is taken over each sub-key table)"),
        ("causal_chunk_size", 0, "an integer >= 1"),
        ("causal_chunk_size", 2.0, "an integer >= 1"),
        ("causal_interest_ffn", "yes", "True or False"),
        ("inference_chunk_positions", 0, "an integer >= 1"),
        ("causal_recency_bias", 1, "True or False"),
    ],
)
def test_bad_hyperparameter_names_causal_elastic_and_the_key(key, value, allowed):
    # ELASTIC's rules too report the model as CausalELASTIC
    assert_rejects_hyperparameter(CausalELASTIC, {key: value}, key, allowed)


def stream(model, sequences):
    """Each event's output ``[B, L, H]`` and the final state, folding one event per user at a time."""
    state = model.init_stream_state(len(sequences))
    outputs = []
    for t in range(len(sequences[0])):
        state = model.stream_update(state, torch.tensor([items[t] for items in sequences]))
        outputs.append(state.output)
    return torch.stack(outputs, dim=1), state


def test_the_stream_state_of_users_without_events():
    model = build_model(CausalELASTIC, n_items=30, max_len=10, **SMALL).eval()
    state = model.init_stream_state(3)
    assert torch.equal(state.length, torch.zeros(3, dtype=torch.long))
    assert torch.equal(state.embedding_sum, torch.zeros(3, 16))
    assert torch.equal(state.output, torch.zeros(3, 16))
    assert len(state.running) == 2
    for running_max, running_sum, numerator in state.running:  # per block: 2 heads of size 8, 4 queries
        assert torch.equal(running_max, torch.full((3, 2, 4, 1), float("-inf")))
        assert torch.equal(running_sum, torch.zeros(3, 2, 4, 1))
        assert torch.equal(numerator, torch.zeros(3, 2, 4, 8))
    assert torch.equal(model.stream_scores(state), torch.zeros(3, 30))  # no event yet: every item scores 0


@pytest.mark.parametrize("use_interest_memory, recency_bias", [(True, False), (False, False), (True, True)])
def test_streaming_equals_the_full_forward_within_the_position_table(use_interest_memory, recency_bias):
    torch.manual_seed(0)
    model = build_model(
        CausalELASTIC,
        max_len=10,
        causal_chunk_size=4,
        use_interest_memory=use_interest_memory,
        causal_recency_bias=recency_bias,
    )
    model.eval()
    if recency_bias:
        model = randomise_recency_slopes(model)
    sequences = [[3, 5, 7, 1, 9, 2, 8], [11, 4, 4, 9, 21, 13, 6], [1, 2, 3, 4, 5, 6, 7]]
    outputs, state = stream(model, sequences)
    assert torch.allclose(outputs, all_positions(model, sequences, 10)[:, :7], atol=1e-5)
    with torch.no_grad():
        scores = model.full_sort_predict(padded_batch(sequences, 10))
    assert torch.allclose(model.stream_scores(state), scores, atol=1e-5)


@pytest.mark.parametrize("recency_bias", [False, True])
def test_streaming_past_the_position_table_equals_the_full_forward_over_the_whole_history(recency_bias):
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=6, causal_chunk_size=4, causal_recency_bias=recency_bias).eval()
    if recency_bias:
        model = randomise_recency_slopes(model)
    generator = torch.Generator().manual_seed(0)
    sequences = torch.randint(1, 30, (3, 25), generator=generator).tolist()
    outputs, state = stream(model, sequences)
    assert int(state.length[0]) == 25
    # positions >= 6 reuse the last position embedding in both
    assert torch.allclose(outputs, all_positions(model, sequences, 25), atol=1e-5)


def test_without_the_interest_ffn_the_model_stays_causal_and_streams():
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, max_len=10, causal_chunk_size=4, causal_interest_ffn=False).eval()
    assert not any("aggregate_ffn" in name for name, _ in model.named_parameters())
    sequences = [[3, 5, 7, 1, 9, 2], [11, 4, 4, 9, 21, 13]]
    full = all_positions(model, sequences, 10)
    assert torch.allclose(all_positions(model, [sequences[0][:3]], 10)[0, 2], full[0, 2], atol=1e-5)
    assert torch.allclose(stream(model, sequences)[0], full[:, :6], atol=1e-5)


@pytest.mark.parametrize("query_norm", ["layer", "running"])
def test_streaming_in_training_mode_is_inference_and_keeps_the_mode(query_norm):
    # Dropout 0.5 and the running BatchNorm's update would make two folds of the same events differ.
    torch.manual_seed(0)
    model = build_model(CausalELASTIC, n_items=30, max_len=10, memory_query_norm=query_norm, **SMALL)
    sequences = [[3, 7, 1, 9], [4, 4, 8, 2]]
    expected, _ = stream(model.eval(), sequences)
    scores = model.stream_scores(stream(model, sequences)[1])
    model.train()
    for _ in range(2):
        outputs, state = stream(model, sequences)
        assert torch.equal(outputs, expected)
        assert torch.equal(model.stream_scores(state), scores)
        assert model.training  # the mode the caller set is restored
    assert not outputs.requires_grad
