"""The zoo's model classes by CLI name, and the display names of every model in the table."""

from __future__ import annotations

from hup.zoo.base import SequenceModel
from hup.zoo.bpr_mf import BprMf
from hup.zoo.dhan import Dhan
from hup.zoo.dupn import Dupn
from hup.zoo.gru4rec import Gru4Rec
from hup.zoo.mind import Mind
from hup.zoo.rib import Rib
from hup.zoo.sasrec import Sasrec
from hup.zoo.sdm import Sdm
from hup.zoo.shrnn import SHrnn
from hup.zoo.time_lstm import TimeLstm
from hup.zoo.word2vec import Word2vec, Word2vecAvg

__all__ = ["DISPLAY_NAMES", "ZOO_CLASSES"]

ZOO_CLASSES: dict[str, type[SequenceModel]] = {
    "bpr-mf": BprMf,
    "word2vec": Word2vec,
    "word2vec-avg": Word2vecAvg,
    "gru4rec": Gru4Rec,
    "rib": Rib,
    "time-lstm": TimeLstm,
    "s-hrnn": SHrnn,
    "dupn": Dupn,
    "sdm": Sdm,
    "mind": Mind,
    "dhan": Dhan,
    "sasrec": Sasrec,
}
"""Neural/embedding models trained by `hup.zoo.fit.fit_zoo` and saved as zoo checkpoints."""

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
