"""Recommending from a causal model event by event: each user's fixed-size streaming state, by external tokens.

:class:`StreamingRecommender` serves any model with the streaming interface (CausalELASTIC)::

    init_stream_state(batch_size) -> state       # users with no events yet
    stream_update(state, item_ids [B]) -> state  # fold one event per user
    stream_scores(state) -> [B, n_items]         # every item's score as each user's next event

A state is tensors whose first dimension is the user (in a dataclass, tuples, lists or dicts); the recommender
treats it as opaque beyond that. All users' states are kept as one batched state, so folding a batch of events is
one ``stream_update`` call. Folding never re-reads a user's history: the cost of an event does not grow with it.

``topk`` leaves out the padding id and, by default (``exclude_seen``), the items the user has already interacted
with, as RecBole's full-sort evaluation ranks them. That keeps one set of item ids per user beside the
fixed-size state; ``exclude_seen=False`` keeps no history at all.
"""

import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from recbole_elastic.atomic import atomic_path
from recbole_elastic.errors import ConfigError, UnknownTokenError

STREAMING_METHODS = ("init_stream_state", "stream_update", "stream_scores")
FILE_FORMAT = "recbole-elastic streaming states"
FILE_VERSION = 1


def state_leaves(state: Any) -> List[torch.Tensor]:
    """The tensors of a streaming state, depth first (dataclass fields in order, tuples, lists, dict values)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if dataclasses.is_dataclass(state):
        return [leaf for field in dataclasses.fields(state) for leaf in state_leaves(getattr(state, field.name))]
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in state_leaves(part)]
    if isinstance(state, dict):
        return [leaf for key in state for leaf in state_leaves(state[key])]
    raise TypeError(f"a streaming state holds tensors, in dataclasses, tuples, lists or dicts; got {type(state)}")


def state_from_leaves(template: Any, leaves: List[torch.Tensor]) -> Any:
    """A state shaped as ``template`` holding ``leaves`` (in :func:`state_leaves`' order)."""
    remaining = iter(leaves)

    def rebuild(part: Any) -> Any:
        if isinstance(part, torch.Tensor):
            return next(remaining)
        if dataclasses.is_dataclass(part):
            return type(part)(**{field.name: rebuild(getattr(part, field.name)) for field in dataclasses.fields(part)})
        if isinstance(part, (tuple, list)):
            return type(part)(rebuild(item) for item in part)
        return {key: rebuild(value) for key, value in part.items()}

    return rebuild(template)


def item_tokens_digest(item_tokens: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(item_tokens).encode("utf-8")).hexdigest()


class StreamingRecommender:
    """Each user's streaming state under a causal model, by external user and item tokens (see the module
    docstring). The model is put in eval mode; ``item_tokens[i]`` is the external token of internal item id ``i``
    (``'[PAD]'`` at 0, as RecBole's ``dataset.field2id_token``)."""

    def __init__(self, model: nn.Module, item_tokens: Sequence[str], exclude_seen: bool = True) -> None:
        missing = [name for name in STREAMING_METHODS if not callable(getattr(model, name, None))]
        if missing:
            raise ConfigError(
                f"{type(model).__name__} has no streaming state ({', '.join(missing)} missing): streaming needs a "
                "causal model with init_stream_state, stream_update and stream_scores, such as CausalELASTIC."
            )
        self.model = model.eval()
        self.item_tokens = [str(token) for token in item_tokens]
        self.item_ids = {token: index for index, token in enumerate(self.item_tokens) if index > 0}
        self.exclude_seen = exclude_seen
        self.template = model.init_stream_state(0)  # the state's structure; rows are users
        if any(leaf.dim() == 0 or leaf.size(0) != 0 for leaf in state_leaves(self.template)):
            raise ConfigError(
                f"{type(model).__name__}.init_stream_state(0) must give tensors with one row per user (dimension 0)."
            )
        self.users: List[str] = []
        self.user_rows: Dict[str, int] = {}
        self.leaves = state_leaves(self.template)  # rows past len(users) are spare: states without events
        self.seen: List[Set[int]] = []

    @classmethod
    def from_checkpoint(cls, path: str, exclude_seen: bool = True) -> "StreamingRecommender":
        """A recommender over the model saved in ``path`` (its dataset is read again for the item id map)."""
        from recbole_elastic.saved_model import load_saved_model

        saved = load_saved_model(path)
        return cls(saved.model, saved.item_tokens, exclude_seen=exclude_seen)

    # Events

    def fold(self, user: str, item: str) -> None:
        """Fold one event (``user`` interacted with ``item``) into the user's state; a new user starts empty."""
        self.fold_many([user], [item])

    def fold_many(self, users: Sequence[str], items: Sequence[str]) -> None:
        """Fold events ``(users[i], items[i])`` in order, as many ``fold`` calls would, in batched model calls:
        all users' first events in the batch together, then their second ones, and so on. Unknown items are
        refused before any state changes."""
        if len(users) != len(items):
            raise ValueError(f"fold_many takes as many users as items, got {len(users)} and {len(items)}")
        item_ids = [self.item_id(item) for item in items]
        rows = [self.add_user(str(user)) for user in users]
        rounds: List[List[int]] = []  # rounds[j]: the events that are their user's (j + 1)-th in this batch
        occurrences: Dict[int, int] = {}
        for event, row in enumerate(rows):
            occurrence = occurrences.get(row, 0)
            occurrences[row] = occurrence + 1
            if occurrence == len(rounds):
                rounds.append([])
            rounds[occurrence].append(event)
        device = self.leaves[0].device
        for events in rounds:
            round_rows = torch.tensor([rows[event] for event in events], device=device)
            round_items = torch.tensor([item_ids[event] for event in events], device=device)
            state = self.model.stream_update(self.gather(round_rows), round_items)
            for leaf, new_leaf in zip(self.leaves, state_leaves(state)):
                leaf[round_rows] = new_leaf
        if self.exclude_seen:
            for row, item_id in zip(rows, item_ids):
                self.seen[row].add(item_id)

    # Recommendations

    def scores(self, user: str) -> torch.Tensor:
        """The model's score of every internal item id ``[n_items]`` as ``user``'s next event (nothing left out)."""
        return self.model.stream_scores(self.gather(torch.tensor([self.row(user)], device=self.leaves[0].device)))[0]

    def topk(self, user: str, k: int) -> List[Tuple[str, float]]:
        """``user``'s ``k`` best next items, as ``(item token, score)`` from the best; never the padding id and,
        with ``exclude_seen``, never an item the user has interacted with (fewer than k if fewer remain)."""
        scores = self.scores(user).float().clone()
        scores[0] = float("-inf")
        if self.exclude_seen and self.seen[self.row(user)]:
            scores[torch.tensor(sorted(self.seen[self.row(user)]), device=scores.device)] = float("-inf")
        candidates = int(torch.isfinite(scores).sum())
        values, ids = scores.topk(min(k, candidates))
        return [(self.item_tokens[index], value) for index, value in zip(ids.tolist(), values.tolist())]

    # Users, items and rows

    def item_id(self, item: str) -> int:
        try:
            return self.item_ids[str(item)]
        except KeyError:
            raise UnknownTokenError(
                f"Item {item!r} is not in the model's item catalogue ({len(self.item_ids)} items): the model can "
                "only fold items it was trained with."
            ) from None

    def row(self, user: str) -> int:
        try:
            return self.user_rows[str(user)]
        except KeyError:
            raise UnknownTokenError(
                f"User {user!r} has no events: fold at least one (fold or fold_many) before asking for scores."
            ) from None

    def add_user(self, user: str) -> int:
        """``user``'s row, made (a state without events) if the user is new."""
        row = self.user_rows.get(user)
        if row is None:
            row = len(self.users)
            self.grow(row + 1)
            self.users.append(user)
            self.user_rows[user] = row
            self.seen.append(set())
        return row

    def grow(self, rows: int) -> None:
        """Room for at least ``rows`` users, doubling, so that adding users one at a time stays linear."""
        capacity = self.leaves[0].size(0)
        if rows > capacity:
            extra = state_leaves(self.model.init_stream_state(max(rows, 2 * capacity, 64) - capacity))
            self.leaves = [torch.cat([leaf, more]) for leaf, more in zip(self.leaves, extra)]

    def gather(self, rows: torch.Tensor) -> Any:
        """The state of the users at ``rows``, batched in that order."""
        return state_from_leaves(self.template, [leaf[rows] for leaf in self.leaves])

    # Files

    def save(self, path: str) -> None:
        """Every user's state (and seen items) in one file, replaced in one rename: a reader, or a crash mid-write,
        never leaves half a file."""
        users = len(self.users)
        seen = [sorted(items) for items in self.seen]
        payload = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "model": type(self.model).__name__,
            "item_tokens_sha256": item_tokens_digest(self.item_tokens),
            "exclude_seen": self.exclude_seen,
            "users": list(self.users),
            "state": [leaf[:users].cpu().clone() for leaf in self.leaves],
            "seen_items": torch.tensor([item for items in seen for item in items], dtype=torch.long),
            "seen_counts": torch.tensor([len(items) for items in seen], dtype=torch.long),
        }
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with atomic_path(path) as temporary:
            torch.save(payload, temporary)

    def load(self, path: str) -> None:
        """Replace every user's state (and seen items) with those saved in ``path`` by :meth:`save` over the same
        trained model; this recommender keeps its own ``exclude_seen``."""
        if not os.path.isfile(path):
            raise ConfigError(f"Streaming state file not found: {path}. Pass a file written by save().")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ConfigError(f"{path} is not a streaming state file ({type(error).__name__}: {error}).") from None
        self.check_compatible(path, payload)
        device = self.leaves[0].device
        self.users = list(payload["users"])
        self.user_rows = {user: row for row, user in enumerate(self.users)}
        self.leaves = [leaf.to(device) for leaf in payload["state"]]
        counts = payload["seen_counts"].tolist()
        items = payload["seen_items"].split(counts) if counts else []
        self.seen = [set(chunk.tolist()) for chunk in items]

    def check_compatible(self, path: str, payload: Optional[Dict]) -> None:
        """Raise :class:`ConfigError` unless ``payload`` holds states of this recommender's model and items."""
        what = f"{path} holds streaming states of"
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ConfigError(f"{path} is not a streaming state file (written by StreamingRecommender.save).")
        if payload["version"] != FILE_VERSION:
            raise ConfigError(f"{path} has version {payload['version']}; this version reads {FILE_VERSION}.")
        if payload["model"] != type(self.model).__name__:
            raise ConfigError(f"{what} {payload['model']}, not {type(self.model).__name__}: load it with that model.")
        if payload["item_tokens_sha256"] != item_tokens_digest(self.item_tokens):
            raise ConfigError(f"{what} another item catalogue: load it with the checkpoint it was saved with.")
        if self.exclude_seen and not payload["exclude_seen"]:
            raise ConfigError(
                f"{path} was saved with exclude_seen=False, without the users' seen items: load it into a "
                "StreamingRecommender with exclude_seen=False."
            )
        template = state_leaves(self.model.init_stream_state(1))
        shapes = [tuple(leaf.shape[1:]) for leaf in payload["state"]]
        if shapes != [tuple(leaf.shape[1:]) for leaf in template]:
            raise ConfigError(f"{what} a model of other sizes: load it with the checkpoint it was saved with.")
