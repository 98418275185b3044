"""Errors raised by the hup package, under one root so callers can catch them together."""


class HupError(Exception):
    """Root of every error the hup package raises on purpose."""


class EventValidationError(HupError):
    """An input event is malformed; the message names the field and the problem."""


class DataFormatError(HupError):
    """An input data file is malformed; the message names the file, line and token."""


class CheckpointError(HupError):
    """A model checkpoint is missing or unreadable. Operators: retrain or fix HUP_MODEL."""


class StateError(HupError):
    """A per-user profile state does not fit the model it is stepped with."""


class MissingExtraError(HupError):
    """An optional dependency is not installed; the message names the extra that brings it."""
