"""Every model of the comparison table by CLI name: a factory of `Recommender`s.

``MODELS[name](options, taxonomy)`` returns an unfitted recommender; `hup.evaluate.evaluate`
fits it on the training split (the validation split picks the epoch) and ranks the test
points. Three kinds share the table:

* the protocol's count baselines (POP, S-POP, Item-KNN): fitted by counting, no budget;
* zoo models (`hup.zoo.catalog.ZOO_CLASSES`): trained by `hup.zoo.fit.fit_zoo`;
* HUP and its Table 3 ablations (`hup.config.VARIANTS`): trained by `hup.train.train_model`.

Every learned model gets the same budget from `FitOptions` (max epochs, patience, batch
size, seed); ``options.overrides`` reach each model whose config (or, for HUP,
`TrainOptions`) has a field of that name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from hup.baselines import POP, ItemKNN, Recommender, SPop
from hup.checkpoint import Checkpoint
from hup.config import VARIANTS
from hup.data import Session
from hup.recommender import HupRecommender
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy
from hup.zoo.catalog import DISPLAY_NAMES, ZOO_CLASSES
from hup.zoo.checkpoint import ZooCheckpoint
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.recommender import ZooRecommender

__all__ = ["BASELINES", "MODELS", "Factory", "hup_train_options", "kind_of", "resolve"]

Factory = Callable[[FitOptions, Taxonomy | None], Recommender]

BASELINES: dict[str, Callable[[], Recommender]] = {"pop": POP, "s-pop": SPop, "item-knn": ItemKNN}


def hup_train_options(variant: str, options: FitOptions) -> TrainOptions:
    """HUP's `TrainOptions` for a variant under the shared budget (and matching overrides)."""
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    return TrainOptions(
        variant=variant,
        epochs=options.epochs,
        patience=options.patience,
        batch_size=options.batch_size,
        seed=options.seed,
        device=options.device,
        min_item_count=options.min_item_count,
        data=options.data,
        **{k: v for k, v in options.overrides.items() if k in known and k != "variant"},
    )


def _baseline(name: str) -> Factory:
    return lambda options, taxonomy: BASELINES[name]()


def _zoo(name: str) -> Factory:
    def factory(options: FitOptions, taxonomy: Taxonomy | None) -> Recommender:
        def fit(train: Sequence[Session], valid: Sequence[Session]) -> ZooCheckpoint:
            return fit_zoo(name, train, valid, options, taxonomy)[0]

        return ZooRecommender(DISPLAY_NAMES[name], fit_fn=fit)

    return factory


def _hup(variant: str) -> Factory:
    def factory(options: FitOptions, taxonomy: Taxonomy | None) -> Recommender:
        train_options = hup_train_options(variant, options)

        def fit(train: Sequence[Session], valid: Sequence[Session]) -> Checkpoint:
            return train_model(train, valid, train_options, taxonomy)[0]

        return HupRecommender(DISPLAY_NAMES[variant], fit_fn=fit)

    return factory


MODELS: dict[str, Factory] = {
    **{name: _baseline(name) for name in BASELINES},
    **{name: _zoo(name) for name in ZOO_CLASSES},
    **{variant: _hup(variant) for variant in VARIANTS},
}
"""CLI name -> factory, in the paper's Table 3 order (baselines, then HUP's variants)."""


def kind_of(name: str) -> str:
    """``baseline``, ``zoo`` or ``hup`` (raises KeyError for an unknown name)."""
    if name in BASELINES:
        return "baseline"
    if name in ZOO_CLASSES:
        return "zoo"
    if name in VARIANTS:
        return "hup"
    raise KeyError(name)


def resolve(spec: str) -> list[str]:
    """Model names of a ``--models`` value: ``all`` or comma-separated names (case-insensitive).

    Raises:
        ValueError: A name is not in `MODELS`; the message lists the valid ones.
    """
    if spec.strip().lower() == "all":
        return list(MODELS)
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ValueError(
            f"unknown model(s) {unknown or spec!r}; choose from all, {', '.join(MODELS)}"
        )
    return list(dict.fromkeys(names))
