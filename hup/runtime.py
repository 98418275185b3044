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

from hup.checkpoint import Checkpoint, load_checkpoint
from hup.features import FeatureFlags, Featurizer
from hup.incremental import ProfileState, initial_state, step
from hup.schema import Event

__all__ = ["Applied", "Profile", "Profiler"]


@dataclass(frozen=True)
class Profile:
    """One user's profile after one event."""

    vectors: dict[str, np.ndarray]  # head ("micro", "item", "category0".."categoryK-1") -> vector
    top_categories: list[tuple[str, float]]  # finest level: (category id, cosine), best first


@dataclass(frozen=True)
class Applied:
    """What applying one event did: the new state, the profile (None if dropped), flags."""

    state: ProfileState
    profile: Profile | None
    flags: FeatureFlags


class Profiler:
    """A loaded model plus featurizer, stepping batches of events of distinct users."""

    def __init__(self, checkpoint: Checkpoint, top_n: int = 5) -> None:
        """Wrap a loaded checkpoint; `top_n` categories accompany every profile."""
        self.checkpoint = checkpoint
        self.model = checkpoint.model.eval()
        self.featurizer = Featurizer(checkpoint.spec, checkpoint.vocabularies)
        self.top_n = top_n
        finest = checkpoint.spec.n_levels - 1
        self._finest_head = f"category{finest}"
        self._finest_tokens = checkpoint.vocabularies.categories[finest].tokens
        with torch.no_grad():
            table = self.model.category_embedding(finest).weight[1:]  # OOV is never a result
            self._finest_unit = torch.nn.functional.normalize(table, dim=-1)

    @classmethod
    def load(cls, directory: Path | str, top_n: int = 5) -> Profiler:
        """Load a checkpoint directory (raises `CheckpointError` with what is wrong)."""
        return cls(load_checkpoint(directory), top_n=top_n)

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
            top = self._top_categories(profiles[self._finest_head])
            vectors = {name: p.numpy() for name, p in profiles.items()}
            for j, (i, flags) in enumerate(rows):
                profile = Profile({name: v[j] for name, v in vectors.items()}, top[j])
                results[i] = Applied(new_states[j], profile, flags)
        return [r for r in results if r is not None]

    def _top_categories(self, finest: torch.Tensor) -> list[list[tuple[str, float]]]:
        scores = torch.nn.functional.normalize(finest, dim=-1) @ self._finest_unit.T
        k = min(self.top_n, scores.shape[1])
        values, indices = scores.topk(k, dim=-1)
        return [
            [(self._finest_tokens[i + 1], round(v, 6)) for v, i in zip(vs, ids, strict=True)]
            for vs, ids in zip(values.tolist(), indices.tolist(), strict=True)
        ]
