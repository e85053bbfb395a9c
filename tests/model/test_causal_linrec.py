"""CausalLinRec: LinRec's linear attention over the prefix only, in chunks; its all-position properties are checked
with the other causal models in test_all_positions.py and against the direct computation in test_models.py."""

import pytest
import torch

from recbole_elastic.model import CausalLinRec, LinRec
from recbole_elastic.model.layers import causal_linear_attention

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import assert_rejects_hyperparameter, build_model, padded_batch, randomise_biases_and_gains


def quadratic_causal_linear_attention(query, key, value):
    """The O(N^2) way: the N x N matrix of query_t . key_j, zeroed above the diagonal (j > t), times the values."""
    length = query.size(-2)
    visible = torch.ones(length, length).tril().bool()
    scores = torch.where(visible, query @ key.transpose(-2, -1), torch.zeros(()))
    return scores @ value


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 17, 64])
def test_causal_linear_attention_equals_the_quadratic_formula_for_any_chunk_size(chunk_size):
    torch.manual_seed(0)
    query, key, value = torch.randn(3, 2, 17, 8), torch.randn(3, 2, 17, 8), torch.randn(3, 2, 17, 5)
    expected = quadratic_causal_linear_attention(query, key, value)
    assert torch.allclose(causal_linear_attention(query, key, value, chunk_size), expected, atol=1e-5)


def test_causal_linear_attention_gradients_equal_the_quadratic_formula():
    torch.manual_seed(0)
    inputs = [torch.randn(2, 1, 9, 4, requires_grad=True) for _ in range(3)]
    causal_linear_attention(*inputs, 4).pow(2).sum().backward()
    chunked = [tensor.grad.clone() for tensor in inputs]
    for tensor in inputs:
        tensor.grad = None
    quadratic_causal_linear_attention(*inputs).pow(2).sum().backward()
    for ours, expected in zip(chunked, (tensor.grad for tensor in inputs)):
        assert torch.allclose(ours, expected, atol=1e-5)


def test_with_one_layer_the_output_on_a_prefix_equals_linrec():
    # One layer: position t reads the items up to t in both models, so CausalLinRec's readout is LinRec's (with
    # its padding masked). Two layers differ: LinRec's first layer lets each position read the items after it.
    torch.manual_seed(0)
    causal = randomise_biases_and_gains(build_model(CausalLinRec, max_len=10, n_layers=1, causal_chunk_size=4))
    linrec = build_model(LinRec, max_len=10, n_layers=1).eval()
    linrec.load_state_dict(causal.state_dict())
    batch = padded_batch(SEQUENCES, 10)
    with torch.no_grad():
        expected = linrec.forward(batch["item_id_list"], batch["item_length"])
        assert torch.allclose(causal.forward(batch["item_id_list"], batch["item_length"]), expected, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("causal_chunk_size", 0, "an integer >= 1"),
        ("causal_chunk_size", 2.0, "an integer >= 1"),
        ("n_heads", 0, "an integer >= 1"),
    ],
)
def test_bad_hyperparameter_names_causal_linrec_and_the_key(key, value, allowed):
    assert_rejects_hyperparameter(CausalLinRec, {key: value}, key, allowed)
