"""The profiling runtime the stream drives: events in, new states and profiles out.

It joins the featurizer and the incremental step for a batch of events of different
users. No I/O: loading a checkpoint is the caller's choice of `Profiler.load`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hup.candidates import RankingOptions, build_item_index
from hup.features import FeatureFlags, FeatureState, Featurizer
from hup.hup_checkpoint import Checkpoint, load_checkpoint
from hup.hup_recommender import rank_profiles
from hup.incremental import ProfileState, initial_state, step
from hup.model import collate_repeat
from hup.repeat import repeat_inputs
from hup.schema import Event

__all__ = ["Applied", "Profile", "Profiler", "round_scores"]


@dataclass(frozen=True)
class Profile:
    """One user's profile after one event."""

    vectors: dict[str, np.ndarray]  # head ("micro", "item", "category0".."categoryK-1") -> vector
    # Finest level: (category id, score), best first; the score is the repeat-aware model's
    # probability of that category next, or the paper's model's cosine to the profile.
    top_categories: list[tuple[str, float]]
    # (sku, score), best first, never the open run's sku: the repeat-aware model's
    # probability of that sku next, or the paper's model's cosine to the item profile.
    top_items: list[tuple[str, float]]


@dataclass(frozen=True)
class Applied:
    """What applying one event did: the new state, the profile (None if dropped), flags."""

    state: ProfileState
    profile: Profile | None
    flags: FeatureFlags


class Profiler:
    """A loaded model plus featurizer, stepping batches of events of distinct users."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        top_n: int = 5,
        top_items: int = 20,
        ranking: RankingOptions | None = None,
    ) -> None:
        """Wrap a loaded checkpoint; `top_n` categories and `top_items` skus go with each profile.

        Both are ranked by `hup.hup_recommender.rank_profiles`, the offline evaluation's rule.
        ``ranking`` decides when items are ranked from candidates (default: the
        environment's, ``HUP_ANN_*``); the candidate index is built here, once.
        """
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.featurizer = Featurizer(checkpoint.spec, checkpoint.vocabularies)
        self.top_n = top_n
        self.top_items = top_items
        self._finest = checkpoint.spec.n_levels - 1
        ranking = ranking if ranking is not None else RankingOptions.from_env()
        self.item_index = build_item_index(self.model, ranking)

    @classmethod
    def load(cls, directory: Path | str, top_n: int = 5, top_items: int = 20) -> Profiler:
        """Load a checkpoint directory (raises `CheckpointError` with what is wrong)."""
        return cls(load_checkpoint(directory), top_n=top_n, top_items=top_items)

    @property
    def version(self) -> str:
        """The model version every state and profile is stamped with."""
        return self.checkpoint.version

    def new_state(self) -> ProfileState:
        """State of a user never seen before."""
        return initial_state(self.model, self.featurizer.initial_state())

    def apply(self, states: Sequence[ProfileState], events: Sequence[Event]) -> list[Applied]:
        """Apply `events[i]` to `states[i]`; every event must belong to a different user."""
        results: list[Applied | None] = [None] * len(events)
        rows, features, feature_states = [], [], []
        for i, (state, event) in enumerate(zip(states, events, strict=True)):
            new_features, feats, flags = self.featurizer.apply(state.features, event)
            if feats is None:
                results[i] = Applied(state, None, flags)
            else:
                rows.append((i, flags))
                features.append(feats)
                feature_states.append(new_features)
        if rows:
            new_states, profiles = step(
                self.model, [states[i] for i, _ in rows], features, feature_states
            )
            items, categories = self._rank(profiles, feature_states)
            vectors = {name: p.numpy() for name, p in profiles.items()}
            for j, (i, flags) in enumerate(rows):
                vector = {name: v[j] for name, v in vectors.items()}
                profile = Profile(vector, categories[j], items[j])
                results[i] = Applied(new_states[j], profile, flags)
        return [r for r in results if r is not None]

    def _rank(
        self, profiles: dict[str, torch.Tensor], feature_states: list[FeatureState]
    ) -> tuple[list[list[tuple[str, float]]], list[list[tuple[str, float]]]]:
        """Top skus and finest-level categories, as tokens, of each row."""
        inputs = dict(profiles)
        if self.model.repeat_heads is not None:
            inputs.update(collate_repeat([repeat_inputs(fs) for fs in feature_states]))
        open_items = [fs.item_id if fs.has_open and fs.item_id else None for fs in feature_states]
        items, (finest,) = rank_profiles(
            self.model,
            inputs,
            self.top_items,
            self.top_n,
            open_items,
            self.item_index,
            levels=(self._finest,),
        )
        vocab = self.checkpoint.vocabularies
        item_tokens, category_tokens = vocab.items.tokens, vocab.categories[self._finest].tokens
        return _named(item_tokens, items), _named(category_tokens, finest)


def _named(
    tokens: tuple[str, ...], ranked: list[tuple[list[int], list[float]]]
) -> list[list[tuple[str, float]]]:
    """Each row's (token, score rounded to 6 decimals), the scores rounded in one numpy call."""
    rounded = round_scores([s for _, scores in ranked for s in scores])
    out, start = [], 0
    for ids, _ in ranked:
        out.append(
            list(zip(map(tokens.__getitem__, ids), rounded[start : start + len(ids)], strict=True))
        )
        start += len(ids)
    return out


def round_scores(scores: list[float]) -> list[float]:
    """``[round(s, 6) for s in scores]`` for float32 scores, in one numpy call.

    A float32 has at most 24 significant bits and 10**6 needs 14 after its factor of
    2**6, so s * 10**6 is exact in float64; rounding it half to even and dividing by
    10**6 (one correctly rounded division) gives the float nearest the decimal, which is
    what `round` returns. Scores that are not float32 values take `round` itself.
    """
    values = np.array(scores, dtype=np.float64)
    if not np.array_equal(values.astype(np.float32), values, equal_nan=True):
        return [round(s, 6) for s in scores]
    return (np.rint(values * 1e6) / 1e6).tolist()
