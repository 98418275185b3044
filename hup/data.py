"""Sessions and datasets: the containers, the 70/10/20 split, dataset specs and JSONL export."""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from hup.exceptions import DataFormatError, EventValidationError
from hup.schema import Event, MicroEvent, parse_event_json
from hup.vocab import Taxonomy, normalize_categories

__all__ = [
    "VARIANT_OPTIONS",
    "Dataset",
    "Session",
    "cut_session",
    "iter_events",
    "load_dataset",
    "read_jsonl",
    "split_sessions",
    "with_category_paths",
    "write_jsonl",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """One session of one user.

    Attributes:
        session_id: Unique within a dataset.
        user_id: The user (the Kafka key); a user may own several sessions.
        events: Micro and dwell events in arrival order, timestamps non-decreasing.
    """

    session_id: str
    user_id: str
    events: tuple[Event, ...]


@dataclass(frozen=True)
class Dataset:
    """Sessions from one source, in the order that stands in for time.

    Attributes:
        name: Where the sessions came from, e.g. the JD file stems.
        sessions: In file (time) order; `split_sessions` relies on it.
        taxonomy: Leaf category -> path coarse..leaf; None when the source gives leaves only.
        train_frac: Fraction of every training set that is kept (its first part): a property
            of the splits, so `hup.splits.protocol_splits` applies it wherever they are made.
    """

    name: str
    sessions: list[Session]
    taxonomy: dict[str, tuple[str, ...]] | None
    train_frac: float = 1.0


def split_sessions(
    sessions: Sequence[Session],
) -> tuple[list[Session], list[Session], list[Session]]:
    """Split sessions 70/10/20 into train/validation/test, keeping their order (the protocol).

    Integer arithmetic, so 1000 sessions give exactly 700/100/200.
    """
    n = len(sessions)
    train_end, valid_end = n * 7 // 10, n * 8 // 10
    return (
        list(sessions[:train_end]),
        list(sessions[train_end:valid_end]),
        list(sessions[valid_end:]),
    )


def cut_session(session: Session, max_len: int) -> Session:
    """The session cut to its first ``max_len`` micro events, as the stream saw it right then.

    The cut keeps every event up to and including the ``max_len``-th micro event. A dwell
    event arrives when its visit ends, i.e. after the visit's last micro event (at the next
    page, `hup.jd`), so the visit still open at the cut keeps no dwell event: one would carry
    time spent after the cut. A session with at most ``max_len`` micro events is unchanged.
    """
    seen, last_micro = 0, -1
    for index, event in enumerate(session.events):
        if isinstance(event, MicroEvent):
            seen += 1
            if seen > max_len:
                return dataclasses.replace(session, events=session.events[: last_micro + 1])
            last_micro = index
    return session


def with_category_paths(sessions: Sequence[Session], taxonomy: Taxonomy | None) -> list[Session]:
    """The sessions with every micro event's categories as the taxonomy's K levels, coarse..leaf.

    A model trained with a taxonomy sees K category levels (its featurizer expands each leaf);
    the evaluation must score targets and fit the baselines on the same K levels, or a
    leaf-only dataset (JD) would give the model K levels and everything else one. The
    expansion is the featurizer's (`normalize_categories`): a leaf the taxonomy does not know
    keeps the levels it carries, padded at the coarse end with `OOV_TOKEN`, which no ranking
    holds (so such a target is a miss at those levels). Without a taxonomy the sessions are
    returned unchanged.
    """
    if taxonomy is None:
        return list(sessions)
    n_levels = taxonomy.n_levels
    expanded = []
    for session in sessions:
        events: list[Event] = []
        for event in session.events:
            if isinstance(event, MicroEvent):
                path, _ = normalize_categories(event.categories, n_levels, taxonomy)
                if list(path) != event.categories:
                    event = event.model_copy(update={"categories": list(path)})
            events.append(event)
        expanded.append(dataclasses.replace(session, events=tuple(events)))
    return expanded


def iter_events(sessions: Iterable[Session]) -> Iterator[Event]:
    """Yield every event as one stream, for a producer.

    Users are interleaved by timestamp, as a live site would send them, while each user's own
    events (their sessions in list order) keep their order exactly: the merge only ever takes
    the next event of a user, so ties and clock quirks never reorder a user.
    """
    per_user: dict[str, list[Session]] = {}
    for session in sessions:
        per_user.setdefault(session.user_id, []).append(session)
    streams = ([e for s in user_sessions for e in s.events] for user_sessions in per_user.values())
    return heapq.merge(*streams, key=lambda event: event.ts)


def write_jsonl(events: Iterable[Event], path: Path) -> int:
    """Write events one JSON object per line (behaviour as its JD code); return the count."""
    count = 0
    with path.open("wb") as out:
        for event in events:
            out.write(orjson.dumps(event.model_dump(mode="json", exclude_none=True)))
            out.write(b"\n")
            count += 1
    logger.info("wrote %d events to %s", count, path)
    return count


def read_jsonl(path: Path) -> Iterator[Event]:
    """Read events written by `write_jsonl` (or any producer following the schema), lazily.

    Raises:
        DataFormatError: A line is not a valid event; the message names file and line.
    """
    with path.open("rb") as lines:
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_event_json(line)
            except EventValidationError as exc:
                raise DataFormatError(f"{path}, line {line_no}: {exc}") from exc


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
    # Imported here because hup.jd builds `Session`s from this module.
    from hup.jd import DEFAULT_BASE_TS, SESSION_SPACING_S, read_jd

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
    from hup.synthetic import SyntheticConfig, generate  # see _load_jd

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
