"""Sparse updates of the interest memory: sparse value gradients, lazy Adam, the composite optimizer."""

import io

import pytest
import torch

from recbole_elastic.errors import ConfigError
from recbole_elastic.model import ELASTIC
from recbole_elastic.model.layers import ProductKeyInterestMemory
from recbole_elastic.optim import (
    SparseAwareOptimizer,
    build_optimizer,
    clip_grad_norm_,
    prepare_sparse_gradients_for_ddp,
    sync_grad_loss,
)

from tests.helpers import build_model, padded_batch

LR = 0.01
# A small ELASTIC without dropout, so that two twins given the same batches compute the same thing.
TINY = dict(
    hidden_size=16,
    inner_size=32,
    n_layers=1,
    n_heads=2,
    n_interests=4,
    memory_keys=4,
    memory_topk=4,
    memory_key_dim=8,
    hidden_dropout_prob=0.0,
    attn_dropout_prob=0.0,
)


class Config(dict):
    """The trainer keys build_optimizer reads; missing keys (reg_weight) are None, as in RecBole's Config."""

    def __getitem__(self, key):
        return self.get(key)


def adam_config(learner="adam", weight_decay=0.0):
    return Config(learner=learner, learning_rate=LR, weight_decay=weight_decay)


def make_memory(sparse=True, n_keys=16):
    torch.manual_seed(0)
    return ProductKeyInterestMemory(16, 3, n_keys, 4, 8, query_norm="batch", initializer_range=0.02, sparse=sparse)


def memory_step(memory, optimizer, summary):
    """One training step of the bare memory; returns the slots it retrieved."""
    optimizer.zero_grad()
    tokens, slots = memory(summary)
    tokens.pow(2).sum().backward()
    optimizer.step()
    return set(slots.unique().tolist())


def changed_rows(before, after):
    return set(torch.nonzero((before != after).any(dim=1)).flatten().tolist())


def random_batch(generator, batch_size=32, n_items=40, width=8):
    lengths = torch.randint(1, width + 1, (batch_size,), generator=generator)
    sequences = [torch.randint(1, n_items, (int(n),), generator=generator).tolist() for n in lengths]
    batch = padded_batch(sequences, width)
    batch.interaction["item_id"] = torch.randint(1, n_items, (batch_size,), generator=generator)
    return batch


def twin_models(**overrides):
    """The same tiny ELASTIC (same initial weights) with dense and with sparse memory updates."""
    torch.manual_seed(0)
    dense = build_model(ELASTIC, n_items=40, max_len=8, memory_sparse_updates=False, **{**TINY, **overrides}).train()
    torch.manual_seed(0)
    sparse = build_model(ELASTIC, n_items=40, max_len=8, memory_sparse_updates=True, **{**TINY, **overrides}).train()
    return dense, sparse


# ----------------------------------------------------------------------------------------------- gradients
def test_value_gradient_is_sparse_and_holds_exactly_the_retrieved_slots():
    memory = make_memory(sparse=True).train()
    dense_twin = make_memory(sparse=False).train()
    summary = torch.randn(6, 16)
    tokens, slots = memory(summary)
    tokens.pow(2).sum().backward()
    dense_tokens, _ = dense_twin(summary)
    dense_tokens.pow(2).sum().backward()

    grad = memory.values.weight.grad
    assert grad.is_sparse
    assert set(grad.coalesce().indices()[0].tolist()) == set(slots.unique().tolist())
    assert len(set(slots.unique().tolist())) < memory.n_slots // 2  # the test means something: most rows untouched
    torch.testing.assert_close(grad.to_dense(), dense_twin.values.weight.grad)


def test_elastic_memory_sparse_updates_hyperparameter():
    assert build_model(ELASTIC, memory_sparse_updates=False).interest_memory.values.sparse is False
    model = build_model(ELASTIC).train()  # the YAML default: sparse
    batch = padded_batch([[3, 5, 7], [1, 2, 3, 4], [11], [4, 9]], 10)
    batch.interaction["item_id"] = torch.tensor([1, 2, 3, 4])
    model.calculate_loss(batch).backward()
    assert model.interest_memory.values.weight.grad.is_sparse
    with pytest.raises(ConfigError, match="memory_sparse_updates"):
        build_model(ELASTIC, memory_sparse_updates="yes")


# ----------------------------------------------------------------------------------------------- one step
def test_a_step_moves_only_retrieved_rows_by_adams_step():
    memory = make_memory(sparse=True).train()
    optimizer = build_optimizer(adam_config(), memory)
    assert isinstance(optimizer, SparseAwareOptimizer)
    generator = torch.Generator().manual_seed(1)
    first_batch, second_batch = torch.randn(6, 16, generator=generator), torch.randn(6, 16, generator=generator)

    before = memory.values.weight.detach().clone()
    first_rows = memory_step(memory, optimizer, first_batch)
    after_first = memory.values.weight.detach().clone()
    assert changed_rows(before, after_first) == first_rows

    # Independent reference: torch's dense Adam on a copy of just those rows, given their gradient.
    rows = torch.tensor(sorted(first_rows))
    reference = before[rows].clone().requires_grad_()
    reference.grad = memory.values.weight.grad.to_dense()[rows]
    torch.optim.Adam([reference], lr=LR).step()
    torch.testing.assert_close(after_first[rows], reference.detach())
    # In closed form, Adam's first step moves each element by lr * |g| / (|g| + eps): about lr, against the gradient.
    grad = reference.grad
    torch.testing.assert_close(after_first[rows] - before[rows], -LR * grad / (grad.abs() + 1e-8), rtol=1e-3, atol=0)

    # Second step: rows retrieved by the first batch only keep their value (dense Adam would move them by momentum).
    second_rows = memory_step(memory, optimizer, second_batch)
    assert first_rows - second_rows, "the two batches retrieve the same rows: the test would prove nothing"
    assert changed_rows(after_first, memory.values.weight.detach()) == second_rows


# ----------------------------------------------------------------------------------------------- training
def train(model, batches, optimizer):
    touched, losses = [], []
    hook = model.interest_memory.register_forward_hook(lambda module, inputs, output: touched.append(output[1]))
    for batch in batches:
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    hook.remove()
    return torch.tensor(losses), [set(slots.unique().tolist()) for slots in touched]


def test_lazy_adam_trains_like_dense_adam_when_every_slot_is_retrieved():
    dense, sparse = twin_models()
    dense_optimizer = build_optimizer(adam_config(), dense)
    sparse_optimizer = build_optimizer(adam_config(), sparse)
    assert type(dense_optimizer) is torch.optim.Adam and isinstance(sparse_optimizer, SparseAwareOptimizer)
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator) for _ in range(30)]

    dense_losses, _ = train(dense, batches, dense_optimizer)
    sparse_losses, touched = train(sparse, batches, sparse_optimizer)
    # 16 slots, 32 users x 4 heads x top-4: every slot is retrieved at every step, so lazy Adam is dense Adam.
    assert all(rows == set(range(16)) for rows in touched)
    assert dense_losses[0] - dense_losses[-1] > 0.05  # it trains
    torch.testing.assert_close(sparse_losses[:1], dense_losses[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(sparse_losses, dense_losses, rtol=0, atol=1e-5)
    values = sparse.interest_memory.values.weight, dense.interest_memory.values.weight
    torch.testing.assert_close(*values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("learner", ["adam", "adamw"])
def test_weight_decay_on_touched_rows_matches_torch(learner):
    """With every slot retrieved, lazy Adam's L2 (adam) and decoupled (adamw) decay equal torch's."""
    dense, sparse = twin_models()
    config = adam_config(learner=learner, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator) for _ in range(5)]
    dense_losses, _ = train(dense, batches, build_optimizer(config, dense))
    sparse_losses, _ = train(sparse, batches, build_optimizer(config, sparse))
    torch.testing.assert_close(sparse_losses, dense_losses, rtol=0, atol=1e-5)
    values = sparse.interest_memory.values.weight, dense.interest_memory.values.weight
    torch.testing.assert_close(*values, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- checkpoints
def test_optimizer_state_dict_round_trip_resumes_exactly():
    _, model = twin_models()
    optimizer = build_optimizer(adam_config(), model)
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(generator) for _ in range(4)]
    train(model, batches[:3], optimizer)

    # What RecBole's checkpoint holds, through torch.save / torch.load as there.
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    _, resumed = twin_models()
    resumed.load_state_dict(checkpoint["state_dict"])
    resumed_optimizer = build_optimizer(adam_config(), resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])

    train(model, batches[3:], optimizer)
    train(resumed, batches[3:], resumed_optimizer)
    for (name, parameter), resumed_parameter in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(parameter, resumed_parameter), name


def test_loading_a_dense_optimizer_state_is_refused():
    dense, sparse = twin_models()
    with pytest.raises(ValueError, match="memory_sparse_updates"):
        build_optimizer(adam_config(), sparse).load_state_dict(build_optimizer(adam_config(), dense).state_dict())


# ----------------------------------------------------------------------------------------------- the trainer's needs
def test_sparse_updates_need_an_adam_learner():
    _, sparse = twin_models()
    with pytest.raises(ConfigError, match="learner"):
        build_optimizer(adam_config(learner="sgd"), sparse)


def test_clip_grad_norm_accepts_sparse_gradients_and_equals_torch():
    dense, sparse = twin_models()
    generator = torch.Generator().manual_seed(0)
    batch = random_batch(generator)
    for model in (dense, sparse):
        model.calculate_loss(batch).backward()
    table = sparse.interest_memory.values.weight.detach().clone().requires_grad_()
    table.grad = sparse.interest_memory.values.weight.grad.clone()
    with pytest.raises(NotImplementedError):  # why clip_grad_norm_ exists; drop it when torch handles sparse
        torch.nn.utils.clip_grad_norm_([table], 0.1)
    dense_norm = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.1)
    sparse_norm = clip_grad_norm_(sparse.parameters(), 0.1)
    torch.testing.assert_close(sparse_norm, dense_norm)
    assert dense_norm > 0.1  # the gradients were scaled
    for dense_parameter, sparse_parameter in zip(dense.parameters(), sparse.parameters()):
        grad = sparse_parameter.grad.to_dense() if sparse_parameter.grad.is_sparse else sparse_parameter.grad
        torch.testing.assert_close(grad, dense_parameter.grad)


def test_sync_grad_loss_keeps_the_memory_gradient_sparse():
    _, sparse = twin_models()
    batch = random_batch(torch.Generator().manual_seed(0))
    (sparse.calculate_loss(batch) + sync_grad_loss(sparse)).backward()
    assert sparse.interest_memory.values.weight.grad.is_sparse
    assert sparse.interest_memory.sub_keys.grad is not None


def test_ddp_preparation_keeps_sparse_on_gloo_only():
    _, model = twin_models()
    assert prepare_sparse_gradients_for_ddp(model, "gloo") and model.interest_memory.values.sparse
    assert not prepare_sparse_gradients_for_ddp(model, "nccl") and not model.interest_memory.values.sparse
    assert type(build_optimizer(adam_config(), model)) is torch.optim.Adam
