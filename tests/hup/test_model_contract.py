"""HUP and every zoo model implement the one model contract."""

import pytest

from hup.model import HupModel
from hup.model_contract import ProfileModel
from hup.zoo.registry import ZOO_CLASSES


@pytest.mark.parametrize("cls", [HupModel, *ZOO_CLASSES.values()], ids=lambda c: c.__name__)
def test_every_model_is_a_profile_model(cls: type) -> None:
    assert issubclass(cls, ProfileModel)
    assert cls.forward is not ProfileModel.forward
