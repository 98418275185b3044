"""Sessions -> featurized sequences and training examples, through the shared featurizer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hup.features import EventFeatures, FeatureSpec, FeatureState, Featurizer
from hup.model import NEIGHBOUR_PART, collate_features, collate_repeat
from hup.repeat import RepeatInputs, repeat_inputs
from hup.sessions import Session
from hup.vocab import Taxonomy, build_vocabularies

__all__ = [
    "FeaturizedSession",
    "batches",
    "count_batches",
    "count_clamped_gaps",
    "featurize_session",
    "training_positions",
]


@dataclass(frozen=True)
class FeaturizedSession:
    """A session's features and, per event, the index of the latest feature at or before it.

    ``n_clamped`` counts the micro events whose negative time differences (out-of-order
    timestamps) the featurizer clamped to 0, the offline twin of the stream's
    ``clamped_gap`` counter.
    """

    features: list[EventFeatures]
    feature_at_event: list[int]  # -1 until the first accepted event
    n_clamped: int = 0
    # The featurizer's state after each feature (same index as `features`): the repeat
    # channel reads the user's memory at a point from it (`hup.repeat.repeat_inputs`).
    states: tuple[FeatureState, ...] = ()
    _repeat: dict[int, RepeatInputs] = field(default_factory=dict, repr=False, compare=False)

    def repeat_at(self, index: int) -> RepeatInputs:
        """The repeat inputs after feature `index`, computed once (training reads them each epoch)."""
        cached = self._repeat.get(index)
        if cached is None:
            cached = self._repeat[index] = repeat_inputs(self.states[index])
        return cached


def featurize_session(featurizer: Featurizer, session: Session) -> FeaturizedSession:
    """Run the causal featurizer over one session, exactly as the stream would."""
    state = featurizer.initial_state()
    features: list[EventFeatures] = []
    states: list[FeatureState] = []
    at_event: list[int] = []
    clamped = 0
    for event in session.events:
        state, feats, flags = featurizer.apply(state, event)
        clamped += flags.gap_clamped
        if feats is not None:
            features.append(feats)
            states.append(state)
        at_event.append(len(features) - 1)
    return FeaturizedSession(features, at_event, clamped, tuple(states))


def count_clamped_gaps(
    sessions: Sequence[Session], n_levels: int, taxonomy: Taxonomy | None = None
) -> int:
    """Micro events of ``sessions`` whose out-of-order timestamps the featurizer clamps.

    Clamping depends on timestamps only, not on ids, so any vocabulary gives the count; this
    one is built from the sessions themselves, for code (the evaluation) that has no model.
    """
    vocabularies = build_vocabularies((e for s in sessions for e in s.events), n_levels, taxonomy)
    featurizer = Featurizer(FeatureSpec(n_levels=n_levels), vocabularies)
    return sum(featurize_session(featurizer, s).n_clamped for s in sessions)


def training_positions(features: Sequence[EventFeatures]) -> list[tuple[int, int]]:
    """(position, target position) pairs: the last micro event of each run and the next run's start.

    These are the protocol's prediction points, so the model is trained where it is judged.
    """
    pairs = []
    last_micro = None
    for t, f in enumerate(features):
        if not f.is_micro:
            continue
        if last_micro is not None and f.item_change:
            pairs.append((last_micro, t))
        last_micro = t
    return pairs


def count_batches(sessions: Sequence[FeaturizedSession], batch_size: int) -> int:
    """How many batches `batches` yields (for progress bars)."""
    usable = sum(1 for s in sessions if training_positions(s.features))
    return -(-usable // batch_size)


def batches(
    sessions: Sequence[FeaturizedSession],
    batch_size: int,
    generator: torch.Generator | None = None,
    repeat: bool = False,
    parts: Sequence[int] | None = None,
) -> Iterator[tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]]:
    """Training batches: (collated features, positions [N, 2], targets) over sessions with points.

    Sessions are grouped by length so that padding stays small; batch order is shuffled.
    Targets keep the OOV id 0 of skus and categories below the vocabulary's min-count; the
    losses leave those points out of that level's term (`HupModel.loss`). With ``repeat``
    the batch also holds each point's repeat inputs (`hup.model.REPEAT_KEYS`); ``parts``
    (one per session) adds each point's neighbour table (`hup.model.NEIGHBOUR_PART`).
    """
    kept = [i for i, s in enumerate(sessions) if training_positions(s.features)]
    usable = [sessions[i] for i in kept]
    order = sorted(range(len(usable)), key=lambda i: len(usable[i].features))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    shuffle = (
        torch.randperm(len(groups), generator=generator).tolist()
        if generator
        else range(len(groups))
    )
    for g in shuffle:
        chosen = [usable[i] for i in groups[g]]
        positions, target_items, target_categories, memories = [], [], [], []
        point_parts: list[int] = []
        for row, session in enumerate(chosen):
            feats = session.features
            part = parts[kept[groups[g][row]]] if parts is not None else 0
            for t, target in training_positions(feats):
                positions.append((row, t))
                point_parts.append(part)
                target_items.append(feats[target].item)
                target_categories.append(feats[target].categories)
                if repeat:
                    memories.append(session.repeat_at(t))
        collated = collate_features([s.features for s in chosen])
        if repeat:
            collated.update(collate_repeat(memories))
        if parts is not None:
            collated[NEIGHBOUR_PART] = torch.tensor(point_parts, dtype=torch.long)
        yield (
            collated,
            torch.tensor(positions, dtype=torch.long),
            {
                "item": torch.tensor(target_items, dtype=torch.long),
                "categories": torch.tensor(target_categories, dtype=torch.long),
            },
        )
