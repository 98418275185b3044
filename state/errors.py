"""Errors raised by the per-user state layer."""

__all__ = ["StateDecodeError", "StateStoreError", "StateVersionError"]


class StateStoreError(Exception):
    """Root of every error raised by the `state` package."""


class StateDecodeError(StateStoreError):
    """Stored state bytes are corrupt or truncated; the stream resets the user and counts it."""


class StateVersionError(StateDecodeError):
    """State bytes come from another codec or model version; the stream resets and counts it."""
