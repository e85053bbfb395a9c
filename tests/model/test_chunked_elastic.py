"""ChunkedELASTIC: interests per chunk boundary, local attention, against a direct per-position computation."""

import pytest
import torch

from recbole_elastic.model import ChunkedELASTIC
from recbole_elastic.model.chunked_layers import chunk_prefix_softmax

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import assert_rejects_hyperparameter, build_model, padded_batch, randomise_biases_and_gains
from tests.model import reference
from tests.model.test_causal_elastic import stream

SMALL = {"hidden_size": 16, "inner_size": 32, "n_interests": 4, "memory_keys": 8, "memory_topk": 3}


def all_positions(model, sequences, width):
    batch = padded_batch(sequences, width)
    with torch.no_grad():
        return model.forward_all_positions(batch["item_id_list"], batch["item_length"])


def randomised(model):
    """Random biases and gains, and recency slopes far from their start, so a wrong formula cannot hide."""
    model = randomise_biases_and_gains(model)
    for block in model.dispatcher_blocks:
        if block.aggregate.recency_slopes is not None:
            with torch.no_grad():
                block.aggregate.recency_slopes.uniform_(0.0, 1.5)
    return model.eval()


@pytest.mark.parametrize(
    "settings",
    [
        {"interest_chunk_size": 3},
        {"interest_chunk_size": 4, "memory_query_norm": "running"},
        {"interest_chunk_size": 1},  # a boundary before every position, the local window the item itself
        {"interest_chunk_size": 50},  # one chunk longer than the window: local attention only, boundary 0
        {"interest_chunk_size": 3, "local_attention": False},
        {"interest_chunk_size": 3, "use_interest_memory": False},
        {"interest_chunk_size": 3, "causal_recency_bias": True},
        {"interest_chunk_size": 4, "interest_ffn": False, "memory_query_norm": "none"},
        {"interest_chunk_size": 3, "norm_first": True},
        {"interest_chunk_size": 4, "norm_first": True, "interest_ffn": False, "causal_recency_bias": True},
        {"interest_chunk_size": 3, "norm_first": True, "local_attention": False, "use_interest_memory": False},
    ],
)
def test_every_position_equals_the_direct_computation(settings):
    torch.manual_seed(0)
    model = randomised(build_model(ChunkedELASTIC, max_len=10, **settings))
    every = all_positions(model, SEQUENCES, 10)
    batch = padded_batch(SEQUENCES, 10)
    with torch.no_grad():
        readout = model.forward(batch["item_id_list"], batch["item_length"])
        for row, items in enumerate(SEQUENCES):
            expected = reference.chunked_elastic_all_positions(model, items)
            assert torch.allclose(every[row, : len(items)], expected, atol=1e-5), row
            assert torch.allclose(readout[row], expected[-1], atol=1e-5), row  # the readout is the last position


def test_a_checkpoint_without_norm_first_is_post_ln():
    torch.manual_seed(0)
    unset = randomised(build_model(ChunkedELASTIC, max_len=10, interest_chunk_size=3, norm_first=None))
    torch.manual_seed(0)
    post = randomised(build_model(ChunkedELASTIC, max_len=10, interest_chunk_size=3, norm_first=False))
    assert unset.state_dict().keys() == post.state_dict().keys()
    assert torch.equal(all_positions(unset, SEQUENCES, 10), all_positions(post, SEQUENCES, 10))


@pytest.mark.parametrize("chunk_size", [2, 3, 4, 7])
def test_position_t_equals_the_history_truncated_at_t_with_and_without_padding(chunk_size):
    # the window (10) is no multiple of most chunk sizes: the last chunk is padded inside the model
    torch.manual_seed(0)
    model = randomised(build_model(ChunkedELASTIC, max_len=10, interest_chunk_size=chunk_size))
    full = all_positions(model, SEQUENCES, 10)
    for row, items in enumerate(SEQUENCES):
        for t in range(len(items)):
            padded = all_positions(model, [items[: t + 1]], 10)[0, t]
            alone = all_positions(model, [items[: t + 1]], t + 1)[0, t]  # no padding at all
            assert torch.allclose(full[row, t], padded, atol=1e-5), (row, t)
            assert torch.allclose(full[row, t], alone, atol=1e-5), (row, t)


def test_every_earlier_item_reaches_the_last_position_through_the_interests_or_the_window():
    torch.manual_seed(0)
    model = randomised(build_model(ChunkedELASTIC, max_len=12, interest_chunk_size=3, **SMALL))
    items = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    base = all_positions(model, [items], 12)[0, -1]
    for s in range(len(items) - 1):
        changed = list(items)
        changed[s] = 20
        assert (all_positions(model, [changed], 12)[0, -1] - base).abs().max() > 1e-6, s


def test_chunk_prefix_softmax_equals_a_masked_softmax_before_every_boundary():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, 12, dtype=torch.float64) * 3
    scores[1, :, :, 7:] = float("-inf")  # padding: the last chunk of row 1 is empty, the one before partly
    values = torch.randn(2, 3, 12, 5, dtype=torch.float64)
    out = chunk_prefix_softmax(scores, values, chunk_size=4)  # [2 3 4 3 5]
    assert torch.equal(out[..., 0, :], torch.zeros_like(out[..., 0, :]))  # nothing before the first boundary
    for j in (1, 2):
        expected = torch.softmax(scores[..., : 4 * j], dim=-1) @ values[:, :, : 4 * j]
        assert torch.allclose(out[..., j, :], expected, atol=1e-12)


def test_chunk_prefix_softmax_is_stable_and_differentiable_with_large_scores_and_padding():
    scores = torch.tensor([[[[500.0, -500.0, 0.0, 900.0, float("-inf"), float("-inf")]]]], requires_grad=True)
    values = torch.randn(1, 1, 6, 2, requires_grad=True)
    out = chunk_prefix_softmax(scores, values, chunk_size=2)
    assert torch.allclose(out[0, 0, 0, 1], values[0, 0, 0])  # 500 >> -500: all the weight on the first key
    assert torch.allclose(out[0, 0, 0, 2], values[0, 0, 3])
    out.sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(values.grad).all()


@pytest.mark.parametrize("norm_first", [False, True])
def test_training_reaches_every_parameter_and_the_interest_memory_sparsely(norm_first):
    torch.manual_seed(0)
    model = build_model(
        ChunkedELASTIC, max_len=10, interest_chunk_size=3, causal_recency_bias=True, norm_first=norm_first
    ).train()
    batch = padded_batch(SEQUENCES, 10)
    output = model.forward_all_positions(batch["item_id_list"], batch["item_length"])
    (output * torch.randn_like(output)).sum().backward()  # a plain sum of a LayerNorm's output has no gradient
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if name == "interest_memory.values.weight":
            assert parameter.grad.is_sparse
        else:
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_no_tensor_holds_k_interest_states_per_position():
    # CausalELASTIC's [B, N, k, H] is what this model removes: its largest tensor grows with N, not N * k
    from tests.model.test_causal_elastic import largest_tensor

    torch.manual_seed(0)
    sizes = {"interest_chunk_size": 20, "n_interests": 16, "hidden_size": 16, "inner_size": 32, "memory_keys": 8}
    model = build_model(ChunkedELASTIC, max_len=400, **sizes).eval()
    for width in (200, 400):
        biggest = largest_tensor(model, width)  # one window of `width` items
        assert biggest < width * 16 * 16 / 2, (width, biggest)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("interest_chunk_size", 0, "an integer >= 1"),
        ("local_attention", "yes", "True or False"),
        ("interest_ffn", 1, "True or False"),
        ("norm_first", "yes", "True or False"),
        (
            "memory_query_norm",
            "batch",
            "one of ['layer', 'running', 'none'] (batch statistics would mix the positions of a training batch)",
        ),
    ],
)
def test_bad_hyperparameter_names_chunked_elastic_and_the_key(key, value, allowed):
    assert_rejects_hyperparameter(ChunkedELASTIC, {key: value}, key, allowed)


# ----- streaming -----


@pytest.mark.parametrize(
    "settings",
    [
        {"interest_chunk_size": 3},
        {"interest_chunk_size": 4, "causal_recency_bias": True},
        {"interest_chunk_size": 3, "use_interest_memory": False, "local_attention": False},
        {"interest_chunk_size": 1},
        {"interest_chunk_size": 3, "norm_first": True},
        {"interest_chunk_size": 4, "norm_first": True, "local_attention": False, "interest_ffn": False},
    ],
)
def test_streaming_equals_the_full_pass_within_and_past_the_position_table(settings):
    torch.manual_seed(0)
    model = randomised(build_model(ChunkedELASTIC, n_items=30, max_len=8, **SMALL, **settings))
    generator = torch.Generator().manual_seed(1)
    sequences = torch.randint(1, 30, (3, 19), generator=generator).tolist()  # 19 events: past the table of 8
    streamed, state = stream(model, sequences)
    full = all_positions(model, sequences, 19)
    assert torch.allclose(streamed, full, atol=1e-5)
    assert torch.allclose(model.stream_scores(state), full[:, -1] @ model.item_embedding.weight.T, atol=1e-4)


def test_the_stream_state_does_not_grow_with_the_history():
    torch.manual_seed(0)
    model = build_model(ChunkedELASTIC, n_items=30, max_len=8, interest_chunk_size=3, **SMALL).eval()

    def sizes(state):
        tensors = [state.length, state.embedding_sum, state.output, *state.interests, *state.recent]
        tensors += [part for running in state.running for part in running]
        return [tuple(tensor.shape) for tensor in tensors]

    start = model.init_stream_state(2)
    _, later = stream(model, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [5] * 11])
    assert sizes(later) == sizes(start)
    assert later.recent[0].shape == (2, 3, 16)  # the last C = 3 inputs per block


def test_streaming_in_training_mode_is_inference_and_keeps_the_mode():
    torch.manual_seed(0)
    model = build_model(ChunkedELASTIC, n_items=30, max_len=10, interest_chunk_size=3, **SMALL)
    sequences = [[3, 7, 1, 9, 2], [4, 4, 8, 2, 6]]
    expected, _ = stream(model.eval(), sequences)
    model.train()
    for _ in range(2):  # dropout 0.5 would make two folds differ
        outputs, _ = stream(model, sequences)
        assert torch.equal(outputs, expected)
        assert model.training
