"""SDM: the short- and long-term parts slide causally with the input."""

from __future__ import annotations

from untrained_zoo import assert_causal, untrained_model

from hup.zoo.sdm import Sdm, SdmConfig


def test_sdm_short_and_long_parts_slide_causally(tiny) -> None:
    model, points, test, checkpoint = untrained_model(Sdm, "sdm", tiny, short=2, long=3, heads=2)
    assert isinstance(model.config, SdmConfig)
    assert_causal(checkpoint, test, points)
