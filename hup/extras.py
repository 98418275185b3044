"""Optional dependencies, imported only where needed, with one line naming the extra.

The worker needs neither gensim nor matplotlib nor the embedded broker, so they are
extras of the package (pyproject.toml): ``train`` (gensim for skip-gram initialised
item embeddings, matplotlib for ``hup compare``'s chart) and ``embedded`` (the tansu
broker that tests, the demo and the Procfile start). A feature that needs one calls
`require`, and a missing extra is a `MissingExtraError` the command lines print as
one line instead of a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hup.exceptions import MissingExtraError

__all__ = ["require"]


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise `MissingExtraError` naming ``extra`` and ``purpose``.

    Args:
        module: The module to import, e.g. ``"gensim.models"``.
        extra: The package extra that installs it, e.g. ``"train"``.
        purpose: What needs it, completing "install hup-stream[extra] for ...".

    Raises:
        MissingExtraError: The module (or one it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).split(".")[0]
        raise MissingExtraError(
            f"install hup-stream[{extra}] for {purpose} ({missing} is not installed)"
        ) from None
