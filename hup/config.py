"""The model configuration, saved inside every checkpoint next to the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Self

__all__ = ["VARIANTS", "CellKind", "HupConfig", "SavedConfig"]

CellKind = Literal["behavior", "time", "lstm"]


class SavedConfig:
    """JSON round trip and level count of a frozen model config with `n_categories`.

    Shared by HUP's config and the comparison models' configs, which are saved in
    checkpoints the same way.
    """

    n_categories: tuple[int, ...]

    @property
    def n_levels(self) -> int:
        """Number of category levels."""
        return len(self.n_categories)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        data["n_categories"] = list(self.n_categories)
        return dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of `to_dict`; unknown keys are an error (a config from a newer version)."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**{**data, "n_categories": tuple(data["n_categories"])})


@dataclass(frozen=True)
class HupConfig(SavedConfig):
    """Sizes and switches of one HUP model. Defaults are the paper's."""

    n_items: int  # item vocabulary size, OOV included
    n_categories: tuple[int, ...]  # category vocabulary size per level, coarse..fine
    n_behaviors: int = 11  # JD codes 1..10; id 0 unused
    n_gap_buckets: int = 5
    n_dwell_buckets: int = 5
    item_dim: int = 30  # item embedding = item-level profile space
    behavior_dim: int = 5
    category_dim: int = 8  # category embedding = category-level profile space
    dwell_dim: int = 5
    gap_dim: int = 5
    hidden: int = 100  # every pyramid layer
    attention_hidden: int = 20  # the two-layer scoring net of Eq. 5
    window: int = 50  # attention window W (entries per layer), same offline and online
    cell: CellKind = "behavior"  # behavior = Eq. 4; time = Time-LSTM gates only; lstm = plain
    use_micro: bool = True  # False = HUP-NoMicro: the item layer sees items only
    attention: bool = True  # False = HUP-NoAtt: the profile comes from the last output
    single: bool = False  # True = HUP-Single: one micro layer feeds every profile head
    lambda_micro: float = 0.0  # loss weights of Eq. 7 (the paper's best: 0, 0.5, 0.5)
    lambda_item: float = 0.5
    lambda_category: float = 0.5
    softmax_weight: float = 0.0  # auxiliary softmax over cosine scores (off = the paper's loss)
    softmax_temperature: float = 0.1
    softmax_negatives: int = 0  # sampled negatives per batch; 0 = the full vocabulary
    # The repeat-aware model (`hup.model.RepeatHeads`): a repeat channel over the user's
    # recent distinct items and an explore channel over the vocabulary, mixed by a gate and
    # trained with the mixture's likelihood beside the cosine loss. False = the paper's model.
    repeat: bool = False
    repeat_hidden: int = 32  # hidden units of each repeat scorer
    dropout: float = 0.0  # on every layer's input while training
    # Co-visitation neighbours per id in the explore channel (`hup.neighbours`); 0 = none.
    neighbours: int = 0


VARIANTS: dict[str, dict[str, Any]] = {
    "hup": {"repeat": True, "dropout": 0.2, "neighbours": 50},
    "hup-paper": {},
    "hup-nomicro": {"use_micro": False},
    "hup-lstm": {"cell": "lstm"},
    "hup-tlstm": {"cell": "time"},
    "hup-noatt": {"attention": False},
    "hup-single": {"single": True},
}
"""The default repeat-aware HUP, the paper's model (`hup-paper`) and the paper's ablations
of it (Table 3), as config overrides."""
