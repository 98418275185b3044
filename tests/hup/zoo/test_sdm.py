"""SDM: the short- and long-term parts slide causally with the input."""

from __future__ import annotations

import torch
from untrained_zoo import untrained_model

from hup.hup_recommender import profiles_at_points
from hup.zoo.sdm import Sdm, SdmConfig


def test_sdm_short_and_long_parts_slide_causally(tiny) -> None:
    model, points, test, checkpoint = untrained_model(Sdm, "sdm", tiny, short=2, long=3, heads=2)
    assert isinstance(model.config, SdmConfig)
    full = profiles_at_points(checkpoint, test, points)
    cut_sessions = [
        type(s)(s.session_id, s.user_id, s.events[: p.n_input])
        for s, p in ((test[p.session_index], p) for p in points)
    ]
    cut_points = [
        type(p)(n, p.n_input, p.target_item, p.target_categories, p.last_input_item, p.is_last)
        for n, p in enumerate(points)
    ]
    cut = profiles_at_points(checkpoint, cut_sessions, cut_points)
    for head in full:
        torch.testing.assert_close(full[head], cut[head], rtol=1e-5, atol=1e-5)
