"""StreamingRecommender: folding events one by one recommends as re-reading the whole history does; batches of
events fold as one-at-a-time folds; a saved and reloaded state continues identically."""

import os

import numpy as np
import pytest
import torch

from recbole_elastic.errors import ConfigError, UnknownTokenError
from recbole_elastic.model import CausalELASTIC, CausalSASRec, ChunkedELASTIC
from recbole_elastic.streaming import StreamingRecommender, state_leaves

from tests.helpers import build_model, padded_batch, randomise_biases_and_gains

N_ITEMS, MAX_LEN = 30, 10
SMALL = {
    "hidden_size": 16,
    "inner_size": 32,
    "n_interests": 4,
    "memory_keys": 8,
    "memory_topk": 2,
    "memory_key_dim": 8,
    "causal_chunk_size": 4,
}
TOKENS = ["[PAD]"] + [f"m{i}" for i in range(1, N_ITEMS)]  # external item tokens: id i is "m{i}"


def causal_elastic(recency_bias=False, **overrides):
    torch.manual_seed(0)
    model = randomise_biases_and_gains(
        build_model(CausalELASTIC, N_ITEMS, MAX_LEN, causal_recency_bias=recency_bias, **SMALL, **overrides)
    )
    if recency_bias:
        with torch.no_grad():
            for block in model.dispatcher_blocks:
                block.aggregate.recency_slopes.uniform_(-0.5, 1.5)
    return model


def chunked_elastic(chunk_size=3, **overrides):
    torch.manual_seed(0)
    model = build_model(ChunkedELASTIC, N_ITEMS, MAX_LEN, interest_chunk_size=chunk_size, **SMALL, **overrides)
    return randomise_biases_and_gains(model)


# The causal models whose state streams: CausalELASTIC (with and without the recency bias) and ChunkedELASTIC,
# each also with cosine scores (score_temperature).
STREAMING_MODELS = {
    "CausalELASTIC": causal_elastic,
    "CausalELASTIC-recency": lambda: causal_elastic(recency_bias=True),
    "CausalELASTIC-cosine": lambda: causal_elastic(score_temperature=0.05),
    "ChunkedELASTIC": chunked_elastic,
    "ChunkedELASTIC-cosine": lambda: chunked_elastic(score_temperature=0.05),
}


def random_history(length, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, N_ITEMS, (length,), generator=generator).tolist()


def full_pass_scores(model, history):
    """Every item's score after ``history`` from the model reading the whole history at once: ``forward`` (the
    readout at the last position) within the position table, ``forward_all_positions`` at the last position past
    it."""
    with torch.no_grad():
        if len(history) <= MAX_LEN:
            return model.full_sort_predict(padded_batch([history], MAX_LEN))[0]
        batch = padded_batch([history], len(history))
        output = model.forward_all_positions(batch["item_id_list"], batch["item_length"])[0, -1]
        items = model.item_embedding.weight
        if model.score_temperature is not None:  # cosine similarity over the temperature
            return output @ items.T / output.norm() / items.norm(dim=-1).clamp_min(1e-12) / model.score_temperature
        return output @ items.T


def expected_topk(scores, history, k):
    """Top k by numpy: padding and the history's items left out, best first."""
    scores = scores.numpy().astype(np.float64)
    scores[[0, *history]] = -np.inf
    best = np.argsort(-scores, kind="stable")[:k]
    return [f"m{i}" for i in best], scores[best]


@pytest.mark.parametrize("name", list(STREAMING_MODELS))
@pytest.mark.parametrize("length", [1, 7, MAX_LEN, 23])  # 23: past the position table
def test_folding_event_by_event_recommends_as_the_full_pass_over_the_history(name, length):
    model = STREAMING_MODELS[name]()
    history = random_history(length, seed=length)
    recommender = StreamingRecommender(model, TOKENS)
    for item in history:
        recommender.fold("alice", f"m{item}")
    expected = full_pass_scores(model, history)
    assert torch.allclose(recommender.scores("alice"), expected, atol=1e-5)
    top = recommender.topk("alice", 5)
    items, scores = expected_topk(expected, history, 5)
    assert [token for token, _ in top] == items
    assert np.allclose([score for _, score in top], scores, atol=1e-5)
    # Seen items are left out: at most N_ITEMS - 1 - distinct(history) remain.
    everything = recommender.topk("alice", N_ITEMS)
    assert len(everything) == N_ITEMS - 1 - len(set(history))
    assert not {token for token, _ in everything} & {f"m{item}" for item in history}


def test_without_exclude_seen_topk_ranks_every_item_but_padding():
    model = causal_elastic()
    history = random_history(6, seed=1)
    recommender = StreamingRecommender(model, TOKENS, exclude_seen=False)
    recommender.fold_many(["bob"] * len(history), [f"m{item}" for item in history])
    top = recommender.topk("bob", N_ITEMS)
    expected = full_pass_scores(model, history).numpy()
    assert [token for token, _ in top] == [f"m{i}" for i in np.argsort(-expected[1:], kind="stable") + 1]


def event_log(n_users=5, n_events=40, seed=3):
    """Interleaved events of several users, each user several times, in one random order."""
    generator = torch.Generator().manual_seed(seed)
    users = [f"u{int(u)}" for u in torch.randint(0, n_users, (n_events,), generator=generator)]
    items = [f"m{int(i)}" for i in torch.randint(1, N_ITEMS, (n_events,), generator=generator)]
    return users, items


def assert_same_states(first, second):
    assert first.users == second.users
    rows = len(first.users)
    for a, b in zip(state_leaves(first.gather(torch.arange(rows))), state_leaves(second.gather(torch.arange(rows)))):
        assert torch.allclose(a, b, atol=1e-5)
    assert first.seen == second.seen


@pytest.mark.parametrize("name", ["CausalELASTIC-recency", "ChunkedELASTIC"])
def test_fold_many_equals_one_at_a_time_folds_with_repeated_users_in_a_batch(name):
    model = STREAMING_MODELS[name]()
    users, items = event_log()
    one_by_one = StreamingRecommender(model, TOKENS)
    for user, item in zip(users, items):
        one_by_one.fold(user, item)
    batched = StreamingRecommender(model, TOKENS)
    batched.fold_many(users[:25], items[:25])  # each batch holds some users several times
    batched.fold_many(users[25:], items[25:])
    assert len(set(users[:25])) < 25
    assert_same_states(one_by_one, batched)
    for user in set(users):
        assert [t for t, _ in batched.topk(user, 5)] == [t for t, _ in one_by_one.topk(user, 5)]
        assert torch.allclose(batched.scores(user), one_by_one.scores(user), atol=1e-5)
        history = [int(item[1:]) for u, item in zip(users, items) if u == user]
        assert torch.allclose(batched.scores(user), full_pass_scores(model, history), atol=1e-5)


def test_a_saved_and_reloaded_state_continues_identically(tmp_path):
    model = causal_elastic()
    users, items = event_log(n_events=60)
    original = StreamingRecommender(model, TOKENS)
    original.fold_many(users[:30], items[:30])
    path = str(tmp_path / "states" / "users.pt")
    original.save(path)
    assert os.listdir(tmp_path / "states") == ["users.pt"]  # written atomically: no temporary file left
    reloaded = StreamingRecommender(model, TOKENS)
    reloaded.fold("someone-else", "m3")  # replaced by the file's users
    reloaded.load(path)
    assert_same_states(original, reloaded)
    original.fold_many(users[30:], items[30:])
    reloaded.fold_many(users[30:], items[30:])
    for user in set(users):
        assert torch.equal(reloaded.scores(user), original.scores(user))
        assert reloaded.topk(user, 5) == original.topk(user, 5)
    with pytest.raises(UnknownTokenError, match="User 'someone-else' has no events"):
        reloaded.topk("someone-else", 5)


def test_a_state_file_of_another_model_or_catalogue_is_refused(tmp_path):
    path = str(tmp_path / "users.pt")
    recommender = StreamingRecommender(causal_elastic(), TOKENS)
    recommender.fold("alice", "m1")
    recommender.save(path)
    bigger = build_model(CausalELASTIC, N_ITEMS, MAX_LEN, **{**SMALL, "hidden_size": 32})
    with pytest.raises(ConfigError, match="a model of other sizes"):
        StreamingRecommender(bigger, TOKENS).load(path)
    with pytest.raises(ConfigError, match="another item catalogue"):
        StreamingRecommender(causal_elastic(), TOKENS[:-1] + ["other"]).load(path)
    with pytest.raises(ConfigError, match="Streaming state file not found"):
        recommender.load(str(tmp_path / "missing.pt"))
    without_seen = StreamingRecommender(causal_elastic(), TOKENS, exclude_seen=False)
    without_seen.fold("alice", "m1")
    without_seen.save(path)
    with pytest.raises(ConfigError, match="saved with exclude_seen=False"):
        recommender.load(path)  # the file has no seen items to leave out
    StreamingRecommender(causal_elastic(), TOKENS, exclude_seen=False).load(path)


def test_unknown_items_and_models_without_a_stream_state_are_refused_by_name():
    recommender = StreamingRecommender(causal_elastic(), TOKENS)
    with pytest.raises(UnknownTokenError, match="Item 'nope' is not in the model's item catalogue"):
        recommender.fold_many(["alice", "bob"], ["m1", "nope"])
    assert recommender.users == []  # nothing was folded
    with pytest.raises(UnknownTokenError, match="Item '\\[PAD\\]'"):
        recommender.fold("alice", "[PAD]")
    with pytest.raises(ConfigError, match="CausalSASRec has no streaming state"):
        StreamingRecommender(build_model(CausalSASRec, N_ITEMS, MAX_LEN), TOKENS)
