"""Properties every plugin model must have, checked for each of them: its output against a direct computation,
the readout position, padding, the losses against hand-computed values, scoring and initialisation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from recbole_elastic.model import ELASTIC, CausalLinRec, LinRec

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import (
    LargestTensor,
    assert_rejects_hyperparameter,
    build_model,
    padded_batch,
    randomise_biases_and_gains,
)
from tests.model import reference

MODELS = [ELASTIC, LinRec]
# Every model variant whose forward differs: ELASTIC with and without its interest memory, LinRec with its
# padding masked (default) and let in as in the authors' code, and CausalLinRec (its chunks smaller than WIDTH).
VARIANTS = {
    "ELASTIC": (ELASTIC, {}),
    "ELASTIC-shared-interests": (ELASTIC, {"use_interest_memory": False}),
    "LinRec": (LinRec, {}),
    "LinRec-include-padding": (LinRec, {"include_padding": True}),
    "CausalLinRec": (CausalLinRec, {"causal_chunk_size": 3}),
}
# The items each SEQUENCES user goes on to (none is the user's first history item) and a negative for BPR.
POSITIVES = torch.tensor([8, 10, 12, 14])
NEGATIVES = torch.tensor([2, 6, 9, 20])
N_ITEMS = 30
WIDTH = 10
DETERMINISTIC = settings(max_examples=25, deadline=None, derandomize=True)


def trained_looking_model(name: str, n_layers: int = 2, loss_type: str = "CE", **hyperparameters):
    """A model in eval mode whose parameters are all far from their initial values (biases, LayerNorm gains and
    BatchNorm statistics included), so that no term of its computation is zero or the identity by accident.

    Built anew by every test (a few milliseconds), never cached: mutation testing runs each mutant against the
    tests that executed the mutated code, and a test that reused a model built by another would not count."""
    model_class, overrides = VARIANTS[name]
    torch.manual_seed(0)
    hyperparameters = {**overrides, **hyperparameters}
    model = build_model(
        model_class, n_items=N_ITEMS, max_len=20, n_layers=n_layers, loss_type=loss_type, **hyperparameters
    )
    return randomise_biases_and_gains(model)


def batch_with_targets(sequences=SEQUENCES, width=WIDTH):
    batch = padded_batch(sequences, width)
    batch.interaction["item_id"] = POSITIVES[: len(sequences)]
    batch.interaction["neg_item_id"] = NEGATIVES[: len(sequences)]
    return batch


def output(model, batch):
    with torch.no_grad():
        return model.forward(batch["item_id_list"], batch["item_length"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("n_layers", [1, 2])
def test_output_equals_the_direct_computation_read_at_the_last_item(name, n_layers):
    model = trained_looking_model(name, n_layers)
    batch = padded_batch(SEQUENCES, WIDTH)
    expected = reference.sequence_output(model, batch["item_id_list"], batch["item_length"])
    assert torch.allclose(output(model, batch), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["ELASTIC", "ELASTIC-shared-interests", "LinRec"])
@given(data=st.data())
@DETERMINISTIC
def test_the_output_is_read_at_the_last_real_item(name, data):
    # Without position embeddings the models see a sequence as a set of items plus the item read out, so
    # reversing the items before the last one changes nothing, and moving another item last changes the output.
    # Reading any other position (the first, the one before the last) sees a different item after reversing.
    model = trained_looking_model(name)
    with torch.no_grad():
        model.position_embedding.weight.zero_()
    length = data.draw(st.integers(3, WIDTH), label="length")
    items = data.draw(st.lists(st.integers(1, N_ITEMS - 1), min_size=length, max_size=length, unique=True))
    reversed_before_last = items[-2::-1] + items[-1:]
    other_last = items[1:] + items[:1]
    first, same, different = output(model, padded_batch([items, reversed_before_last, other_last], WIDTH))
    assert torch.allclose(first, same, atol=1e-5)
    assert not torch.allclose(first, different, atol=1e-3)


@pytest.mark.parametrize("name", ["ELASTIC", "ELASTIC-shared-interests", "LinRec"])
@given(data=st.data())
@DETERMINISTIC
def test_padded_positions_do_not_reach_the_output(name, data):
    # Padded positions still get a position embedding: a model that attends to them, reads one out or puts one
    # into its memory query changes its output when those embeddings (or the padding item's) change.
    length = data.draw(st.integers(1, WIDTH - 1), label="length")
    items = data.draw(st.lists(st.integers(1, N_ITEMS - 1), min_size=length, max_size=length), label="items")
    model = trained_looking_model(name)
    batch = padded_batch([items], WIDTH)
    before = output(model, batch)
    with torch.no_grad():
        model.position_embedding.weight[length:].normal_(0.0, 1.0)
        model.item_embedding.weight[0].normal_(0.0, 1.0)
    assert torch.allclose(output(model, batch), before, atol=1e-5)


@pytest.mark.parametrize("name", ["ELASTIC", "ELASTIC-shared-interests", "LinRec"])
@given(data=st.data())
@DETERMINISTIC
def test_each_users_scores_do_not_depend_on_the_batch_or_its_padded_width(name, data):
    model = trained_looking_model(name)
    lengths = data.draw(st.lists(st.integers(1, 12), min_size=1, max_size=5), label="lengths")
    width = data.draw(st.integers(max(lengths), 20), label="width")
    sequences = [data.draw(st.lists(st.integers(1, N_ITEMS - 1), min_size=n, max_size=n)) for n in lengths]
    with torch.no_grad():
        mixed = model.full_sort_predict(padded_batch(sequences, width))
        for row, items in enumerate(sequences):
            alone = model.full_sort_predict(padded_batch([items], len(items)))
            assert torch.allclose(mixed[row], alone[0], atol=1e-5), row


def test_include_padding_lets_padding_change_linrec_scores():
    # the authors' behaviour, kept behind include_padding: True
    model = trained_looking_model("LinRec-include-padding")
    narrow, wide = output(model, padded_batch(SEQUENCES, 10)), output(model, padded_batch(SEQUENCES, 20))
    assert not torch.allclose(narrow, wide, atol=1e-4)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_ce_loss_is_the_cross_entropy_of_the_positive_item_over_all_items(name):
    model = trained_looking_model(name)
    batch = batch_with_targets()
    logits = output(model, batch) @ model.item_embedding.weight.T  # [B, n_items]
    expected = -F.log_softmax(logits, dim=-1)[torch.arange(4), POSITIVES].mean()
    with torch.no_grad():
        loss = model.calculate_loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_bpr_loss_is_minus_log_sigmoid_of_positive_minus_negative_score(name):
    model = trained_looking_model(name, loss_type="BPR")
    batch = batch_with_targets()
    seq_output = output(model, batch)
    positive = (seq_output * model.item_embedding.weight[POSITIVES]).sum(-1)
    negative = (seq_output * model.item_embedding.weight[NEGATIVES]).sum(-1)
    expected = -torch.log(torch.sigmoid(positive - negative)).mean()
    with torch.no_grad():
        loss = model.calculate_loss(batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("model_class", MODELS)
def test_the_loss_type_picks_the_loss(model_class):
    assert isinstance(build_model(model_class, loss_type="CE").loss_fct, torch.nn.CrossEntropyLoss)
    assert type(build_model(model_class, loss_type="BPR").loss_fct).__name__ == "BPRLoss"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_full_sort_scores_every_item_by_dot_product_and_predict_scores_one(name):
    model = trained_looking_model(name)
    batch = batch_with_targets()
    expected = output(model, batch) @ model.item_embedding.weight.T
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        one = model.predict(batch)
    assert full.shape == (4, N_ITEMS) and torch.allclose(full, expected, atol=1e-5)
    assert torch.allclose(one, expected[torch.arange(4), POSITIVES], atol=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_a_score_temperature_scores_by_cosine_similarity_over_it_in_every_score_and_loss(name, loss_type):
    temperature = 0.05
    model = trained_looking_model(name, loss_type=loss_type, score_temperature=temperature)
    batch = batch_with_targets()
    seq_output, items = output(model, batch), model.item_embedding.weight.detach()
    expected = F.cosine_similarity(seq_output.unsqueeze(1), items.unsqueeze(0), dim=-1, eps=1e-12) / temperature
    with torch.no_grad():
        full, one, loss = model.full_sort_predict(batch), model.predict(batch), model.calculate_loss(batch)
    assert torch.allclose(full, expected, atol=1e-4) and full[:, 1:].abs().max() > 1  # the scale is 1 / tau
    assert torch.allclose(one, expected[torch.arange(4), POSITIVES], atol=1e-4)
    if loss_type == "CE":
        expected_loss = -F.log_softmax(expected, dim=-1)[torch.arange(4), POSITIVES].mean()
    else:
        margin = expected[torch.arange(4), POSITIVES] - expected[torch.arange(4), NEGATIVES]
        expected_loss = -torch.log(torch.sigmoid(margin)).mean()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("temperature", [0, -0.05, True, "0.05"])
def test_a_score_temperature_must_be_a_positive_number(model_class, temperature):
    allowed = "~ (dot product) or a number > 0"
    assert_rejects_hyperparameter(model_class, {"score_temperature": temperature}, "score_temperature", allowed)


@pytest.mark.parametrize("model_class", MODELS)
def test_predict_for_a_batch_of_one_in_training_mode_equals_eval_mode(model_class):
    # RecBole's FLOPs probe calls predict on one interaction with the model in training mode: ELASTIC's query
    # BatchNorm has no batch statistics then and must use its running ones, as in eval mode.
    torch.manual_seed(0)
    model = build_model(model_class, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    batch = padded_batch([[3, 5, 7]], 10)
    batch.interaction["item_id"] = torch.tensor([2])
    with torch.no_grad():
        training = model.train().predict(batch)
        evaluating = model.eval().predict(batch)
    assert training.shape == (1,) and torch.allclose(training, evaluating, atol=1e-6)


@pytest.mark.parametrize("model_class", MODELS)
def test_dropout_is_active_in_training_mode_only(model_class):
    model = build_model(model_class)  # YAML defaults: dropout 0.5
    batch = padded_batch(SEQUENCES, WIDTH)
    with torch.no_grad():
        model.train()
        torch.manual_seed(1)
        first = model.forward(batch["item_id_list"], batch["item_length"])
        torch.manual_seed(2)
        second = model.forward(batch["item_id_list"], batch["item_length"])
        model.eval()
        third = model.forward(batch["item_id_list"], batch["item_length"])
        fourth = model.forward(batch["item_id_list"], batch["item_length"])
    assert not torch.allclose(first, second, atol=1e-3)
    assert torch.equal(third, fourth)


@pytest.mark.parametrize("model_class", MODELS)
def test_initialisation_as_sasrec(model_class):
    torch.manual_seed(0)
    model = build_model(model_class, n_items=2000, initializer_range=0.05)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name
        elif isinstance(module, torch.nn.Linear):
            assert torch.all(module.bias == 0), name
    weights = model.item_embedding.weight  # 2000 x 64 draws of N(0, initializer_range)
    assert abs(weights.mean().item()) < 0.002 and weights.std().item() == pytest.approx(0.05, rel=0.02)
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.numel() >= 16384)
    assert linear.weight.std().item() == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("model_class", MODELS)
def test_layer_norm_eps_reaches_every_layer_norm(model_class):
    model = build_model(model_class, layer_norm_eps=1e-7)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) >= 5 and all(norm.eps == 1e-7 for norm in norms)


@pytest.mark.parametrize("name", ["ELASTIC", "LinRec-include-padding"])
def test_the_padding_item_learns_nothing_and_every_real_item_can(name):
    # padding_idx=0: the padding row gets no gradient through the input even where padding reaches the output
    # (LinRec with include_padding), and item 1 is an ordinary item.
    model = trained_looking_model(name, loss_type="BPR").train()
    model.calculate_loss(batch_with_targets()).backward()
    gradient = model.item_embedding.weight.grad
    assert torch.all(gradient[0] == 0)
    assert gradient[1].abs().sum() > 0  # item 1 is in SEQUENCES


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_scores_on_a_gpu_equal_scores_on_the_cpu(name):
    model = trained_looking_model(name)
    batch = padded_batch(SEQUENCES, WIDTH)
    with torch.no_grad():
        expected = model.full_sort_predict(batch)
        on_gpu = copy.deepcopy(model).cuda().full_sort_predict(batch.to("cuda"))
    assert torch.allclose(on_gpu.cpu(), expected, atol=1e-4)


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
@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("n_layers", 0, "an integer >= 1"),
        ("n_layers", True, "an integer >= 1"),
        ("n_heads", 0, "an integer >= 1"),
        ("inner_size", 2.0, "an integer >= 1"),
        ("hidden_size", 30, "divisible by n_heads=4"),
        ("loss_type", "MSE", "one of ['CE', 'BPR', 'SampledSoftmax']"),
        ("hidden_dropout_prob", 1.0, "a number in [0, 1)"),
        ("hidden_dropout_prob", -0.01, "a number in [0, 1)"),
        ("hidden_dropout_prob", False, "a number in [0, 1)"),
        ("attn_dropout_prob", "0.1", "a number in [0, 1)"),
        ("hidden_act", "mish", "one of ['gelu', 'relu', 'swish', 'tanh', 'sigmoid']"),
    ],
)
def test_bad_hyperparameter_names_the_key(model_class, key, value, fragment):
    overrides = {key: value}
    if key == "hidden_size":
        overrides["n_heads"] = 4
    assert_rejects_hyperparameter(model_class, overrides, key, fragment)


@pytest.mark.parametrize("model_class", MODELS)
@pytest.mark.parametrize("activation", ["gelu", "relu", "swish", "tanh", "sigmoid"])
def test_smallest_valid_hyperparameters_are_accepted(model_class, activation):
    build_model(
        model_class,
        n_layers=1,
        n_heads=1,
        hidden_size=1,
        inner_size=1,
        hidden_dropout_prob=0,
        attn_dropout_prob=0.0,
        hidden_act=activation,
        loss_type="BPR",
    )


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
