"""The model zoo: the paper's baselines (and, later, the seed systems) beside HUP, on one protocol.

Layout: `hup.zoo.base` (the contract every neural model implements, and how to add one),
`hup.zoo.ops` (causal sequence helpers), one module per model, `hup.zoo.fit` (the shared
recipe), `hup.zoo.zoo_recommender` (ranking behind `hup.recommender_contract.Recommender`),
`hup.zoo.zoo_checkpoint`, `hup.zoo.registry` (``MODELS``: every CLI name, baselines and HUP's
variants included) and `hup.zoo.compare` (the comparison table and chart).
"""

from hup.zoo.base import SequenceModel, ZooConfig
from hup.zoo.fit import FitOptions, fit_zoo
from hup.zoo.registry import MODELS

__all__ = ["MODELS", "FitOptions", "SequenceModel", "ZooConfig", "fit_zoo"]
