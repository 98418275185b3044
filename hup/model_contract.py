"""The contract every sequence model implements: HUP (`hup.model.HupModel`) and the zoo's.

One contract, so one recipe trains them (`hup.train.fit_epochs` calls `loss`) and one
function reads their profiles at prediction points
(`hup.hup_recommender.profiles_at_points` calls `forward`). The zoo's base class
(`hup.zoo.base.SequenceModel`) adds what only the comparison models need (output tables,
`scores`, training hooks); HUP adds its incremental ``step`` (`hup.incremental`).
"""

from __future__ import annotations

from torch import Tensor, nn

from hup.config import SavedConfig

__all__ = ["ProfileModel"]


class ProfileModel(nn.Module):
    """A causal model of featurized sessions that yields per-head profiles at given events.

    ``config`` is saved in the model's checkpoint beside the weights.
    """

    config: SavedConfig

    def forward(self, batch: dict[str, Tensor], positions: Tensor) -> dict[str, Tensor]:
        """Profiles after the events at ``positions``, per head.

        Args:
            batch: `hup.model.collate_features` output of whole featurized sessions, tensors
                [B, T] (category fields [B, T, K]).
            positions: [N, 2] (row, time) pairs of the events to profile. The profile at
                (b, t) reads only events <= t of row b.

        Returns:
            ``"item"`` [N, D] and ``"category{k}"`` per level k (coarse..fine), plus any
            model-specific keys.
        """
        raise NotImplementedError

    def loss(
        self, batch: dict[str, Tensor], positions: Tensor, targets: dict[str, Tensor]
    ) -> Tensor:
        """The training loss of one batch.

        Args:
            batch, positions: as for `forward` (positions = the prediction points).
            targets: ``item`` [N] and ``categories`` [N, K] ids of what came next.
        """
        raise NotImplementedError
