"""The causal models: the loss over every position of a window equals the mean of its prefixes' losses."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recbole.data.interaction import Interaction
from recbole.model.layers import TransformerEncoder

from recbole_elastic.model import CausalELASTIC, CausalLinRec, CausalSASRec, ChunkedELASTIC
from recbole_elastic.model.all_positions import DEFAULT_INFERENCE_CHUNK_POSITIONS
from recbole_elastic.standalone import build_standalone_model
from recbole_elastic.utils import get_model
from recbole_elastic.windows import cut_to_longest

from tests.helpers import PADDING_SEQUENCES as SEQUENCES
from tests.helpers import assert_rejects_hyperparameter, build_model, padded_batch, randomise_biases_and_gains
from tests.model import reference

CAUSAL_MODELS = [CausalELASTIC, CausalSASRec, CausalLinRec, ChunkedELASTIC]
WIDTH = 10


def window_batch(width: int = WIDTH, n_items: int = 30, seed: int = 0) -> Interaction:
    """Windows of SEQUENCES: the inputs, and the next item at every position (a random item after the last)."""
    generator = torch.Generator().manual_seed(seed)
    batch = padded_batch(SEQUENCES, width)
    targets = torch.zeros(len(SEQUENCES), width, dtype=torch.long)
    negatives = torch.zeros_like(targets)
    for row, items in enumerate(SEQUENCES):
        following = items[1:] + [int(torch.randint(1, n_items, (1,), generator=generator))]
        targets[row, : len(items)] = torch.tensor(following)
        negatives[row, : len(items)] = torch.randint(1, n_items, (len(items),), generator=generator)
    batch.update(Interaction({"target_item_id_list": targets, "neg_target_item_id_list": negatives}))
    return batch


def prefix_losses(model, batch, loss_type):
    """Each prefix's loss computed on its own: the model reads the truncated history, scores the next item."""
    losses = []
    for row, length in enumerate(batch["item_length"].tolist()):
        for t in range(length):
            prefix = padded_batch([batch["item_id_list"][row, : t + 1].tolist()], WIDTH)
            output = model.forward(prefix["item_id_list"], prefix["item_length"])  # [1 H]
            target = batch["target_item_id_list"][row, t]
            if loss_type == "CE":
                logits = output @ model.item_embedding.weight.T
                losses.append(F.cross_entropy(logits, target.view(1)))
            else:
                negative = batch["neg_target_item_id_list"][row, t]
                pos = (output[0] * model.item_embedding.weight[target]).sum()
                neg = (output[0] * model.item_embedding.weight[negative]).sum()
                losses.append(-torch.log(1e-10 + torch.sigmoid(pos - neg)))  # RecBole's BPRLoss
    return torch.stack(losses)


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
@pytest.mark.parametrize("loss_type", ["CE", "BPR"])
def test_all_position_loss_is_the_mean_of_the_prefix_losses(model_class, loss_type):
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH, loss_type=loss_type).eval()
    batch = window_batch()
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        expected = prefix_losses(model, batch, loss_type)
    assert len(expected) == sum(map(len, SEQUENCES))  # one per real position; padding has no loss
    assert torch.allclose(loss, expected.mean(), atol=1e-5)


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_a_batch_cut_to_its_longest_window_has_the_same_loss(model_class):
    # The training loader cuts each batch's lists to its longest window (9 of 10 here): no output may change.
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH, loss_type="CE").double().eval()
    batch = window_batch()
    cut = cut_to_longest(copy.deepcopy(batch), "item_length", "_list")
    assert cut["item_id_list"].shape == cut["target_item_id_list"].shape == (len(SEQUENCES), 9)
    with torch.no_grad():
        full = model.forward_all_positions(batch["item_id_list"], batch["item_length"])
        assert torch.allclose(model.forward_all_positions(cut["item_id_list"], cut["item_length"]), full[:, :9])
        assert torch.allclose(model.calculate_loss(cut), model.calculate_loss(batch))


# Lengths out of order, with ties, 1 and the full width: groups must sort them and put the outputs back.
EVAL_LENGTHS = [3, 10, 1, 7, 10, 2, 5]


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
@pytest.mark.parametrize("chunk_positions", [1, 12, 25, 10_000])
def test_evaluation_grouped_by_length_gives_the_one_pass_outputs(model_class, chunk_positions):
    # 1: one user per group; 12: groups of 1, 1, 1, 2 and 2 users; 25: 2, 3 and 2; 10,000: one group cut to 10.
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH, inference_chunk_positions=chunk_positions).double().eval()
    item_seq = torch.randint(1, 30, (len(EVAL_LENGTHS), WIDTH), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor(EVAL_LENGTHS)
    item_seq[torch.arange(WIDTH).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    with torch.no_grad():
        one_pass = model.forward_all_positions(item_seq, lengths)[torch.arange(len(EVAL_LENGTHS)), lengths - 1]
        assert torch.allclose(model.forward(item_seq, lengths), one_pass)


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_evaluation_encodes_each_length_group_cut_to_its_longest_history(model_class):
    # Sorted: 10, 10 | 7, 5, 3 | 2, 1 at 21 positions a group (2 x 10, 3 x 7, then what is left at 2);
    # training encodes the batch as given.
    model = build_model(model_class, max_len=WIDTH, inference_chunk_positions=21)
    encoded = []
    one_group = model.last_position_output

    def record(item_seq, item_seq_len):
        encoded.append((tuple(item_seq.shape), sorted(item_seq_len.tolist(), reverse=True)))
        return one_group(item_seq, item_seq_len)

    model.last_position_output = record
    item_seq = torch.randint(1, 30, (len(EVAL_LENGTHS), WIDTH), generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor(EVAL_LENGTHS)
    with torch.no_grad():
        model.eval().forward(item_seq, lengths)
        assert encoded == [((2, 10), [10, 10]), ((3, 7), [7, 5, 3]), ((2, 2), [2, 1])]
        encoded.clear()
        model.train().forward(item_seq, lengths)
        assert encoded == [((7, 10), sorted(EVAL_LENGTHS, reverse=True))]


def test_a_config_without_inference_chunk_positions_gets_the_default():
    # A checkpoint saved before the key applied to every causal model holds no value for it.
    model = build_model(ChunkedELASTIC, max_len=WIDTH, inference_chunk_positions=None)
    assert model.inference_chunk_positions == DEFAULT_INFERENCE_CHUNK_POSITIONS


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_padding_targets_change_nothing(model_class):
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH, loss_type="BPR").eval()
    batch = window_batch()
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        padding = torch.arange(WIDTH).unsqueeze(0) >= batch["item_length"].unsqueeze(1)
        batch["target_item_id_list"][padding] = 7
        batch["neg_target_item_id_list"][padding] = 9
        assert torch.equal(loss, model.calculate_loss(batch))


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_prefix_samples_get_the_last_position_loss(model_class):
    # Without a target sequence (RecBole's prefix samples) the loss is the model's usual one.
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH).eval()
    batch = padded_batch(SEQUENCES, WIDTH)
    batch.interaction["item_id"] = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        logits = model.full_sort_predict(batch)
        assert torch.allclose(model.calculate_loss(batch), F.cross_entropy(logits, batch["item_id"]), atol=1e-6)


# Every TransformerEncoder argument away from RecBole's default (which the YAML defaults equal), in training mode
# without dropout: an argument not passed on to the encoder shows as a state dict that does not load, or as other
# scores (more heads, another activation or LayerNorm eps, dropout at its default 0.5, a layer read out too early).
NOT_THE_DEFAULTS = {
    "n_layers": 3,
    "n_heads": 4,
    "hidden_size": 16,
    "inner_size": 24,
    "hidden_dropout_prob": 0.0,
    "attn_dropout_prob": 0.0,
    "hidden_act": "relu",
    "layer_norm_eps": 0.1,
}


@pytest.mark.parametrize("overrides, training", [({}, False), (NOT_THE_DEFAULTS, True)])
def test_causal_sasrec_with_sasrec_weights_is_recbole_sasrec(overrides, training):
    torch.manual_seed(0)
    sasrec = build_standalone_model("SASRec", 30, WIDTH, **overrides).train(training)
    causal = build_model(CausalSASRec, max_len=WIDTH, **overrides).train(training)
    assert get_model("SASRec").__name__ == "SASRec"
    causal.load_state_dict(sasrec.state_dict())
    batch = padded_batch(SEQUENCES, WIDTH)
    with torch.no_grad():
        assert torch.allclose(causal.full_sort_predict(batch), sasrec.full_sort_predict(batch), atol=1e-6)


def test_pre_ln_causal_sasrec_is_pytorchs_norm_first_encoder_then_a_layernorm():
    torch.manual_seed(0)
    model = randomise_biases_and_gains(build_model(CausalSASRec, max_len=WIDTH, norm_first=True, **NOT_THE_DEFAULTS))
    encoder = model.trm_encoder
    layers = []
    for attention, ffn in zip(encoder.attention, encoder.feed_forward):
        layer = nn.TransformerEncoderLayer(
            16, 4, 24, dropout=0.0, activation="relu", layer_norm_eps=0.1, batch_first=True, norm_first=True
        )
        projections = (attention.query, attention.key, attention.value)
        pairs = [
            (layer.self_attn.out_proj, attention.dense),
            (layer.linear1, ffn.dense_1),
            (layer.linear2, ffn.dense_2),
            (layer.norm1, attention.LayerNorm),
            (layer.norm2, ffn.LayerNorm),
        ]
        with torch.no_grad():
            layer.self_attn.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
            layer.self_attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
            for theirs, ours in pairs:
                theirs.weight.copy_(ours.weight)
                theirs.bias.copy_(ours.bias)
        layers.append(layer.eval())
    batch = padded_batch(SEQUENCES, WIDTH)
    items = batch["item_id_list"]
    future = torch.ones(WIDTH, WIDTH, dtype=torch.bool).triu(1)  # True: hidden
    with torch.no_grad():
        x = reference.embed(model, items)
        for layer in layers:
            x = layer(x, src_mask=future, src_key_padding_mask=items == 0)
        expected = F.layer_norm(x, (16,), encoder.output_norm.weight, encoder.output_norm.bias, 0.1)
        every = model.forward_all_positions(items, batch["item_length"])
    for row, items_of_row in enumerate(SEQUENCES):
        real = len(items_of_row)
        assert torch.allclose(every[row, :real], expected[row, :real], atol=1e-5), row


def test_a_checkpoint_without_norm_first_is_post_ln():
    model = build_model(CausalSASRec, max_len=WIDTH, norm_first=None)
    assert isinstance(model.trm_encoder, TransformerEncoder)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("n_heads", 0, "an integer >= 1"),
        ("hidden_act", "mish", "one of ['gelu', 'relu', 'swish', 'tanh', 'sigmoid']"),
        ("norm_first", 1, "True or False"),
    ],
)
def test_bad_hyperparameter_names_causal_sasrec_and_the_key(key, value, allowed):
    assert_rejects_hyperparameter(CausalSASRec, {key: value}, key, allowed)


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
@pytest.mark.parametrize("value", [0, 2.5, True])
def test_bad_inference_chunk_positions_names_the_model_and_the_key(model_class, value):
    assert_rejects_hyperparameter(
        model_class, {"inference_chunk_positions": value}, "inference_chunk_positions", "an integer >= 1"
    )


STREAMED = [[3, 5, 7, 1, 9], [11, 4, 4, 9, 21]]


def computed_on(model, device):
    """The model's scores of SEQUENCES, its loss over every position of their windows and, for CausalELASTIC, the
    scores after streaming STREAMED, computed on ``device``; returned on the CPU."""
    model = copy.deepcopy(model).to(device)
    with torch.no_grad():
        results = [
            model.full_sort_predict(padded_batch(SEQUENCES, WIDTH).to(device)),
            model.calculate_loss(window_batch().to(device)),
        ]
        if isinstance(model, CausalELASTIC):
            state = model.init_stream_state(len(STREAMED))
            for t in range(len(STREAMED[0])):
                state = model.stream_update(state, torch.tensor([items[t] for items in STREAMED], device=device))
            results.append(model.stream_scores(state))
    return [result.cpu() for result in results]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_causal_models_on_a_gpu_equal_the_cpu(model_class):
    # Every index tensor a causal model makes (positions, the causal chunk mask, the stream's event counts) must be
    # made on the model's device.
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH).eval()
    for on_gpu, on_cpu in zip(computed_on(model, "cuda"), computed_on(model, "cpu")):
        assert torch.allclose(on_gpu, on_cpu, atol=1e-4)


@pytest.mark.parametrize("model_class", CAUSAL_MODELS)
def test_position_t_equals_the_history_truncated_at_t(model_class):
    torch.manual_seed(0)
    model = build_model(model_class, max_len=WIDTH, causal_chunk_size=3).eval()
    batch = padded_batch(SEQUENCES, WIDTH)
    with torch.no_grad():
        full = model.forward_all_positions(batch["item_id_list"], batch["item_length"])
        for row, items in enumerate(SEQUENCES):
            for t in range(len(items)):
                prefix = padded_batch([items[: t + 1]], WIDTH)
                alone = model.forward(prefix["item_id_list"], prefix["item_length"])[0]
                assert torch.allclose(full[row, t], alone, atol=1e-5), (row, t)


def leak_cases():
    """Every causal model, and CausalELASTIC with every retrieval-query normalisation it accepts."""
    cases = [(model_class, {}) for model_class in CAUSAL_MODELS]
    cases += [(CausalELASTIC, {"memory_query_norm": norm}) for norm in ("running", "none")]
    cases += [(CausalELASTIC, {"causal_recency_bias": True})]
    cases += [(ChunkedELASTIC, {"memory_query_norm": norm, "interest_chunk_size": 3}) for norm in ("running", "none")]
    cases += [(ChunkedELASTIC, {"causal_recency_bias": True, "interest_chunk_size": 4})]
    return cases


@pytest.mark.parametrize("model_class, overrides", leak_cases())
def test_in_training_mode_no_item_reaches_an_earlier_position_of_any_window(model_class, overrides):
    """Training mode without dropout: batch statistics or anything else shared across the batch would let a later
    item (a target) move earlier outputs, in its own window or another; float64, so rounding cannot hide it."""
    torch.manual_seed(0)
    no_dropout = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "causal_chunk_size": 3}
    model = build_model(model_class, max_len=WIDTH, **no_dropout, **overrides).double().train()
    batch = padded_batch(SEQUENCES, WIDTH)
    item_seq, lengths = batch["item_id_list"], batch["item_length"]

    def outputs(sequences):  # each pass from the same state: a running statistic's update is not a leak
        return copy.deepcopy(model).forward_all_positions(sequences, lengths).detach()

    base = outputs(item_seq)
    for row, items in enumerate(SEQUENCES):
        for t in range(1, len(items)):
            changed = item_seq.clone()
            changed[row, t : len(items)] = changed[row, t : len(items)] % 29 + 1  # another item at t and after
            output = outputs(changed)
            assert torch.equal(output[row, :t], base[row, :t]), (row, t)
            others = [other for other in range(len(SEQUENCES)) if other != row]
            assert torch.equal(output[others], base[others]), (row, t)
            assert not torch.allclose(output[row, t], base[row, t])  # the changed item itself does reach t


def test_causal_elastic_refuses_batch_statistics_for_retrieval_queries():
    assert_rejects_hyperparameter(
        CausalELASTIC,
        {"memory_query_norm": "batch"},
        "memory_query_norm",
        "one of ['layer', 'running', 'none'] (batch statistics would mix the positions of a training batch)",
    )
