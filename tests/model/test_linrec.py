"""LinRec's linear attention and model, without RecBole's data pipeline (its end-to-end run is in pipeline/)."""

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_elastic.config import build_config
from recbole_elastic.errors import ConfigError
from recbole_elastic.model import LinRec
from recbole_elastic.model.layers import LinRecAttention

from tests.helpers import build_model, tiny_run_config


def naive_linrec_attention(layer: LinRecAttention, x: torch.Tensor, key_mask=None) -> torch.Tensor:
    """The same layer evaluated the O(N^2) way: the N x N matrix Q_hat K_hat^T first, then times V."""
    batch_size, length, hidden = x.shape
    heads, d = layer.n_heads, hidden // layer.n_heads

    def per_head(projection):
        return projection(x).view(batch_size, length, heads, d).transpose(1, 2)

    def l2_rows(t):
        return t / t.norm(dim=-1, keepdim=True)

    q_hat = l2_rows(F.elu(per_head(layer.query)))
    k_hat = l2_rows(F.elu(per_head(layer.key)))
    scores = q_hat @ k_hat.transpose(-2, -1)  # [B, heads, N, N]
    if key_mask is not None:
        scores = scores * key_mask[:, None, None, :]
    attended = (scores @ per_head(layer.value)) / math.sqrt(d)
    attended = attended.transpose(1, 2).reshape(batch_size, length, hidden)
    return layer.LayerNorm(x + layer.dense(attended))


@pytest.mark.parametrize("masked", [False, True])
def test_linear_attention_equals_the_quadratic_formula(masked):
    torch.manual_seed(0)
    layer = LinRecAttention(n_heads=4, hidden_size=32, hidden_dropout_prob=0.0, layer_norm_eps=1e-12).eval()
    for module in (layer.query, layer.key, layer.value, layer.dense):
        torch.nn.init.normal_(module.bias)
    x = torch.randn(3, 17, 32)
    key_mask = torch.arange(17).unsqueeze(0) < torch.tensor([[4], [17], [1]]) if masked else None
    with torch.no_grad():
        fast = layer(x, key_mask)
        naive = naive_linrec_attention(layer, x, key_mask)
    assert torch.allclose(fast, naive, atol=1e-5)


def test_feature_map_normalises_every_row_and_leaves_all_zero_rows_zero():
    layer = LinRecAttention(n_heads=2, hidden_size=8, hidden_dropout_prob=0.0, layer_norm_eps=1e-12)
    rows = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, -1.0, 0.5, 2.0], [1e-6, 0.0, 2e-6, 0.0], [-5.0, -5.0, -5.0, -5.0]])
    rows.requires_grad_(True)
    mapped = layer.feature_map(rows)
    elu = F.elu(rows.detach())
    assert torch.equal(mapped[0], torch.zeros(4))  # no NaN from 0 / 0
    for row in (1, 2, 3):  # tiny norms (1e-6) too: only norms below 1e-12 are clamped
        assert torch.allclose(mapped[row], elu[row] / elu[row].norm(), atol=1e-6), row
    mapped.sum().backward()
    assert torch.isfinite(rows.grad).all()


def test_norm_eps_is_the_smallest_norm_divided_by():
    layer = LinRecAttention(n_heads=1, hidden_size=4, hidden_dropout_prob=0.0, layer_norm_eps=1e-12, norm_eps=2.0)
    rows = torch.tensor([[0.3, 0.4, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]])  # norms 0.5 and 5
    assert torch.allclose(layer.feature_map(rows), torch.tensor([[0.15, 0.2, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]]))


def test_all_zero_rows_give_zero_attention_and_finite_gradients():
    layer = LinRecAttention(n_heads=2, hidden_size=8, hidden_dropout_prob=0.0, layer_norm_eps=1e-12)
    for module in (layer.query, layer.key, layer.value):
        torch.nn.init.zeros_(module.bias)
    x = torch.zeros(1, 5, 8, requires_grad=True)  # every projected row is exactly zero
    query, key, value = layer.project(x, x)
    attended = layer.linear_attention(query, key, value, torch.tensor([[True, True, False, False, False]]))
    assert torch.equal(attended, torch.zeros_like(attended))
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_include_padding_must_be_a_bool():
    with pytest.raises(ConfigError) as error:
        build_model(LinRec, include_padding="yes")
    message = str(error.value)
    assert "LinRec" in message and "`include_padding`" in message and "True or False" in message


def test_yaml_defaults_reach_the_config(tiny_data):
    config = build_config("LinRec", "tiny", config_dict=tiny_run_config(tiny_data))
    assert config["include_padding"] is False
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE: no negative sampling
