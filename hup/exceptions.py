"""Errors raised by the hup package, under one root so callers can catch them together."""


class HupError(Exception):
    """Root of every error the hup package raises on purpose."""


class EventValidationError(HupError):
    """An input event is malformed; the message names the field and the problem.

    ``limits`` names the bounds of `hup.schema.InputLimits` the event exceeds (e.g.
    ``id_chars``), so the stream can count them; empty for any other problem.
    """

    def __init__(self, message: str, *, limits: frozenset[str] = frozenset()) -> None:
        """Keep the message (``str(error)``) and the exceeded bounds."""
        super().__init__(message)
        self.limits = limits


class DataFormatError(HupError):
    """An input data file is malformed; the message names the file, line and token."""


class CheckpointError(HupError):
    """A model checkpoint is missing or unreadable. Operators: retrain or fix HUP_MODEL."""


class RankingOptionsError(HupError, ValueError):
    """A ranking option (``HUP_ANN_*``) is not valid; the message names it and its value."""


class StateError(HupError):
    """A per-user profile state does not fit the model it is stepped with."""


class MissingExtraError(HupError):
    """An optional dependency is not installed; the message names the extra that brings it."""
