"""Properties every plugin model must have, checked for each of them."""

import pytest
import torch

from recbole_elastic.errors import ConfigError
from recbole_elastic.model import ELASTIC, LinRec

from tests.helpers import LargestTensor, build_model, padded_batch

MODELS = [ELASTIC, LinRec]


@pytest.mark.parametrize("model_class", MODELS)
def test_no_sequence_by_sequence_tensor(model_class):
    torch.manual_seed(0)
    width = 400
    model = build_model(model_class, n_items=30, max_len=width).eval()
    batch = padded_batch([list(range(1, 29)) * 14], width)
    with torch.no_grad(), LargestTensor() as probe:
        model.full_sort_predict(batch)
    assert probe.largest < width * width  # the largest is the [1, N, inner_size] FFN activation


@pytest.mark.parametrize("model_class", MODELS)
def test_predict_works_for_a_batch_of_one_in_training_mode(model_class):
    # RecBole's FLOPs probe calls predict on one interaction with the model in training mode.
    model = build_model(model_class).train()
    batch = padded_batch([[3, 5, 7]], 10)
    batch.interaction["item_id"] = torch.tensor([2])
    assert model.predict(batch).shape == (1,)


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("n_layers", 0, "an integer >= 1"),
        ("n_heads", 0, "an integer >= 1"),
        ("hidden_size", 30, "divisible by n_heads"),
        ("loss_type", "MSE", "['CE', 'BPR']"),
        ("hidden_dropout_prob", 1.5, "[0, 1)"),
        ("attn_dropout_prob", -0.1, "[0, 1)"),
        ("hidden_act", "mish", "one of"),
    ],
)
def test_bad_hyperparameter_names_the_key(model_class, key, value, fragment):
    overrides = {key: value}
    if key == "hidden_size":
        overrides["n_heads"] = 4
    with pytest.raises(ConfigError) as error:
        build_model(model_class, **overrides)
    message = str(error.value)
    assert model_class.__name__ in message and f"`{key}`" in message and fragment in message


@pytest.mark.parametrize("activation", ["gelu", "relu", "swish", "tanh", "sigmoid"])
def test_fused_feed_forward_equals_recbole_feed_forward(activation):
    from recbole.model.layers import FeedForward

    from recbole_elastic.model.layers import FusedFeedForward

    torch.manual_seed(0)
    recbole_ffn = FeedForward(16, 32, 0.0, activation, 1e-12).eval()
    fused = FusedFeedForward(16, 32, 0.0, activation, 1e-12).eval()
    fused.load_state_dict(recbole_ffn.state_dict())
    x = torch.randn(3, 7, 16)
    assert torch.allclose(fused(x), recbole_ffn(x), atol=1e-5)
