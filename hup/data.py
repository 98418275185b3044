"""Datasets by spec: ``jd:`` files or the ``synthetic:`` generator, with the protocol's variants."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from pathlib import Path

from hup.exceptions import DataFormatError
from hup.jd import DEFAULT_BASE_TS, SESSION_SPACING_S, read_jd
from hup.sessions import Dataset, Session, cut_session
from hup.synthetic import SyntheticConfig, generate

__all__ = ["VARIANT_OPTIONS", "load_dataset"]

logger = logging.getLogger(__name__)


VARIANT_OPTIONS = ("max_len", "train_frac")
"""Options of any dataset spec that derive a harder variant (docs: the protocol's variants)."""

_OPTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")  # a key=value token; a path is anything else


def _variant_value(key: str, raw: str) -> int | float:
    """Parse one variant option: ``max_len`` an integer >= 1, ``train_frac`` a number in (0, 1]."""
    try:
        value: int | float = int(raw) if key == "max_len" else float(raw)
    except ValueError:
        value = math.nan
    if key == "max_len" and not (isinstance(value, int) and value >= 1):
        raise DataFormatError(f"dataset option max_len={raw!r}: expected an integer >= 1")
    if key == "train_frac" and not 0.0 < value <= 1.0:  # NaN fails this too
        raise DataFormatError(f"dataset option train_frac={raw!r}: expected a number in (0, 1]")
    return value


def _pop_variant_options(tokens: list[str]) -> tuple[list[str], dict[str, int | float]]:
    """Split spec tokens into the rest and the parsed variant options (each at most once)."""
    rest: list[str] = []
    options: dict[str, int | float] = {}
    for token in tokens:
        key, sep, raw = token.partition("=")
        key = key.strip()
        if not sep or key not in VARIANT_OPTIONS:
            rest.append(token)
            continue
        if key in options:
            raise DataFormatError(f"dataset option {key} is given twice")
        options[key] = _variant_value(key, raw.strip())
    return rest, options


def _with_variant(dataset: Dataset, options: dict[str, int | float]) -> Dataset:
    """The dataset with ``max_len`` applied to its sessions and ``train_frac`` recorded."""
    if not options:
        return dataset
    sessions = dataset.sessions
    if "max_len" in options:
        sessions = [cut_session(s, int(options["max_len"])) for s in sessions]
    suffix = ",".join(f"{key}={options[key]}" for key in VARIANT_OPTIONS if key in options)
    return dataclasses.replace(
        dataset,
        name=f"{dataset.name},{suffix}",
        sessions=sessions,
        train_frac=float(options.get("train_frac", 1.0)),
    )


def _load_jd(paths: list[Path]) -> Dataset:
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise DataFormatError(f"JD files must have distinct names (ids use them): {stems}")
    sessions: list[Session] = []
    base_ts = DEFAULT_BASE_TS
    for path in paths:
        file_sessions = read_jd(path, base_ts)
        sessions.extend(file_sessions)
        # The next file starts on the day after this one ends, so files never overlap in time.
        end = max((s.events[-1].ts for s in file_sessions), default=base_ts)
        base_ts = DEFAULT_BASE_TS + SESSION_SPACING_S * (
            math.floor((end - DEFAULT_BASE_TS) / SESSION_SPACING_S) + 1
        )
    return Dataset(name="+".join(stems), sessions=sessions, taxonomy=None)


def _load_synthetic(options: str) -> Dataset:
    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    allowed = ", ".join([*fields, *VARIANT_OPTIONS])
    values: dict[str, int | float] = {}
    tokens = [o.strip() for o in options.split(",")]
    tokens, variant = _pop_variant_options(tokens)
    for option in filter(None, tokens):
        key, sep, raw = option.partition("=")
        key = key.strip()
        if not sep:
            raise DataFormatError(f"synthetic option {option!r} is not key=value")
        if key not in fields:
            raise DataFormatError(f"unknown synthetic option {key!r}; allowed: {allowed}")
        kind = float if fields[key].type in (float, "float") else int
        try:
            values[key] = kind(raw.strip())
        except ValueError as exc:
            raise DataFormatError(f"synthetic option {key}={raw!r}: not {kind.__name__}") from exc
    try:
        config = SyntheticConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise DataFormatError(f"synthetic options {options!r}: {exc}") from exc
    return _with_variant(generate(config), variant)


def load_dataset(spec: str) -> Dataset:
    """Load the dataset a spec names.

    Specs:
        ``jd:PATH[,PATH...]``: JD files as one dataset, sessions file after file, named after
        the file stems joined by ``+``.
        ``synthetic:users=N,seed=S[,levels=3,...]``: the generator, each ``key=value`` setting
        the `SyntheticConfig` field of that name (omitted ones keep their defaults).

    Either takes the protocol's harder variants as further ``key=value`` tokens:
    ``max_len=N`` cuts every session to its first N micro events (`cut_session`) before any
    split; ``train_frac=F`` keeps the first fraction F of every training set (recorded on the
    dataset, applied by `hup.splits.protocol_splits`).

    Raises:
        DataFormatError: The spec is malformed (unknown scheme or option, bad value) or a
            file is.
    """
    scheme, _, rest = spec.partition(":")
    if scheme == "jd":
        tokens, variant = _pop_variant_options([p.strip() for p in rest.split(",")])
        unknown = [t for t in tokens if _OPTION.match(t)]
        if unknown:
            raise DataFormatError(
                f"unknown jd option {unknown[0].partition('=')[0]!r} in {spec!r}; "
                f"allowed: {', '.join(VARIANT_OPTIONS)}"
            )
        paths = [Path(p) for p in tokens if p]
        if not paths:
            raise DataFormatError(f"dataset spec {spec!r} names no file; expected jd:PATH[,PATH]")
        return _with_variant(_load_jd(paths), variant)
    if scheme == "synthetic":
        return _load_synthetic(rest)
    raise DataFormatError(
        f"unknown dataset scheme {scheme!r} in {spec!r}; expected jd:PATH[,PATH...] "
        "or synthetic:key=value,..."
    )
