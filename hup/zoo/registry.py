"""Every model of the comparison table by CLI name: classes, display names and factories.

``MODELS[name](options, taxonomy)`` returns an unfitted recommender; `hup.evaluate.evaluate`
fits it on the training split (the validation split picks the epoch) and ranks the test
points. Three kinds share the table:

* the training-free baselines: the protocol's count baselines (POP, S-POP, Item-KNN) and
  the session-kNN peers (V-SKNN, STAN, `hup.peers`), which tune a few settings on the
  validation split in `fit`; no training budget applies to them;
* zoo models (`ZOO_CLASSES`): trained by `hup.zoo.fit.fit_zoo`;
* HUP and its Table 3 ablations (`hup.config.VARIANTS`): trained by `hup.train.train_model`.

Every learned model gets the same budget from `FitOptions` (max epochs, patience, batch
size, seed); ``options.overrides`` reach each model whose config (or, for HUP,
`TrainOptions`) has a field of that name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hup.baselines import POP, ItemKNN, SPop
from hup.checkpoint_files import read_config
from hup.config import VARIANTS, HupConfig
from hup.hup_checkpoint import Checkpoint, load_checkpoint
from hup.hup_recommender import HupRecommender
from hup.peers import Stan, VSknn
from hup.recommender_contract import Recommender
from hup.sessions import Session
from hup.train import TrainOptions, train_model
from hup.vocab import Taxonomy
from hup.zoo.base import SequenceModel
from hup.zoo.bpr_mf import BprMf
from hup.zoo.dhan import Dhan
from hup.zoo.dupn import Dupn
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.gru4rec import Gru4Rec
from hup.zoo.mind import Mind
from hup.zoo.rib import Rib
from hup.zoo.sasrec import Sasrec
from hup.zoo.sdm import Sdm
from hup.zoo.shrnn import SHrnn
from hup.zoo.time_lstm import TimeLstm
from hup.zoo.word2vec import Word2vec, Word2vecAvg
from hup.zoo.zoo_checkpoint import ZooCheckpoint, load_zoo_checkpoint
from hup.zoo.zoo_recommender import ZooRecommender

__all__ = [
    "BASELINES",
    "DISPLAY_NAMES",
    "MODELS",
    "ZOO_CLASSES",
    "Factory",
    "hup_train_options",
    "kind_of",
    "load_recommender",
    "recommender_taxonomy",
    "resolve",
    "settings_of",
]

ZOO_CLASSES: dict[str, type[SequenceModel]] = {
    cls.name: cls
    for cls in (
        BprMf,
        Word2vec,
        Word2vecAvg,
        Gru4Rec,
        Rib,
        TimeLstm,
        SHrnn,
        Dupn,
        Sdm,
        Mind,
        Dhan,
        Sasrec,
    )
}
"""Neural/embedding models by CLI name, trained by `hup.zoo.fit.fit_zoo` and saved as zoo
checkpoints."""

DISPLAY_NAMES: dict[str, str] = {
    "pop": "POP",
    "s-pop": "S-POP",
    "item-knn": "Item-KNN",
    "v-sknn": "V-SKNN",
    "stan": "STAN",
    "bpr-mf": "BPR-MF",
    "word2vec": "Word2vec",
    "word2vec-avg": "Word2vec-avg",
    "gru4rec": "GRU4Rec",
    "rib": "RIB",
    "time-lstm": "Time-LSTM",
    "s-hrnn": "S-HRNN",
    "dupn": "DUPN",
    "sdm": "SDM",
    "mind": "MIND",
    "dhan": "DHAN",
    "sasrec": "SASRec",
    "hup": "HUP",
    "hup-paper": "HUP-paper",
    "hup-nomicro": "HUP-NoMicro",
    "hup-lstm": "HUP-LSTM",
    "hup-tlstm": "HUP-TLSTM",
    "hup-noatt": "HUP-NoAtt",
    "hup-single": "HUP-Single",
}
"""CLI name -> the name the evaluation table shows (the paper's spelling)."""

Factory = Callable[[FitOptions, Taxonomy | None], Recommender]

BASELINES: dict[str, Callable[[], Recommender]] = {
    "pop": POP,
    "s-pop": SPop,
    "item-knn": ItemKNN,
    "v-sknn": VSknn,
    "stan": Stan,
}


# FitOptions' own fields: the budget is set there, never through ``overrides``.
_BUDGET = {
    "epochs",
    "patience",
    "batch_size",
    "seed",
    "device",
    "min_item_count",
    "min_category_count",
    "data",
}
_HUP_OPTIONS = {f.name for f in dataclasses.fields(TrainOptions)} - _BUDGET
_HUP_OPTIONS -= {"variant", "model_overrides"}
_HUP_CONFIG = {f.name for f in dataclasses.fields(HupConfig)} - {"n_items", "n_categories"}


def settings_of(name: str) -> set[str]:
    """The ``overrides`` keys model ``name`` takes (its config fields; HUP's options too)."""
    if name in ZOO_CLASSES:
        fields = dataclasses.fields(ZOO_CLASSES[name].config_class)
        return {f.name for f in fields} - {"n_items", "n_categories", "n_train_sessions"}
    if name in VARIANTS:
        return _HUP_OPTIONS | _HUP_CONFIG
    return set()


def hup_train_options(variant: str, options: FitOptions) -> TrainOptions:
    """HUP's `TrainOptions` for a variant under the shared budget (and matching overrides).

    Overrides naming a `TrainOptions` field set it; those naming a `HupConfig` field go to
    ``model_overrides``.
    """
    overrides = options.overrides
    return TrainOptions(
        variant=variant,
        epochs=options.epochs,
        patience=options.patience,
        batch_size=options.batch_size,
        seed=options.seed,
        device=options.device,
        min_item_count=options.min_item_count,
        min_category_count=options.min_category_count,
        data=options.data,
        **{k: v for k, v in overrides.items() if k in _HUP_OPTIONS},
        model_overrides={
            k: v for k, v in overrides.items() if k in _HUP_CONFIG and k not in _HUP_OPTIONS
        },
    )


def _baseline(name: str) -> Factory:
    return lambda options, taxonomy: BASELINES[name]()


def _zoo(name: str) -> Factory:
    def factory(options: FitOptions, taxonomy: Taxonomy | None) -> Recommender:
        def fit(train: Sequence[Session], valid: Sequence[Session]) -> ZooCheckpoint:
            return fit_zoo(ZOO_CLASSES[name], train, valid, options, taxonomy)[0]

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


def load_recommender(
    directory: Path, device: str = "cpu"
) -> tuple[Recommender, str, dict[str, Any]]:
    """A trained checkpoint of any kind as a recommender, with its version and training info.

    Raises:
        CheckpointError: The directory is not a readable HUP or zoo checkpoint.
    """
    if read_config(directory).get("kind", "hup") == "zoo":
        zoo = load_zoo_checkpoint(directory, ZOO_CLASSES, device)
        return ZooRecommender(DISPLAY_NAMES[zoo.name], checkpoint=zoo), zoo.version, zoo.info
    hup = load_checkpoint(directory, device)
    variant = str(hup.info.get("options", {}).get("variant", "hup"))
    name = DISPLAY_NAMES.get(variant, variant.upper())
    return HupRecommender(name, checkpoint=hup), hup.version, hup.info


def recommender_taxonomy(recommender: Recommender) -> Taxonomy | None:
    """The taxonomy a loaded model was trained with (in its vocabularies); None without one.

    Its evaluation must expand sessions through the same taxonomy, so that targets and
    baselines have the model's K category levels.
    """
    if isinstance(recommender, HupRecommender | ZooRecommender) and recommender.checkpoint:
        return recommender.checkpoint.vocabularies.taxonomy
    return None


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
