"""Seeded generator of JD-like sessions from users with latent interests over a category tree."""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from hup.schema import Behavior, DwellEvent, Event, MicroEvent
from hup.sessions import Dataset, Session

__all__ = ["SyntheticConfig", "build_taxonomy", "generate", "iter_sessions"]

logger = logging.getLogger(__name__)

_MAX_LEAVES = 10_000_000  # the leaf popularity table is dense; fail fast instead of swapping

# Behaviour mix measured on the two JD sample files (see hup/jd.py), rounded.
# A visit opens with an entry behaviour, mostly from a search list ...
_ENTRY_CODES = (5, 4, 2, 1, 3)
_ENTRY_CDF = np.cumsum((0.785, 0.105, 0.086, 0.017, 0.007)).tolist()
# ... then 0-3 detail views (about 58 % of JD visits are a single micro-behaviour) ...
_DETAILS_CDF = np.cumsum((0.60, 0.31, 0.06, 0.03)).tolist()
_DETAIL_CODES = (7, 6, 8)
_DETAIL_CDF = np.cumsum((0.47, 0.33, 0.20)).tolist()
# ... then sometimes Cart (more often on a revisit: users come back to buy), rarely Order.
_P_CART_NEW, _P_CART_REVISIT, _P_ORDER_AFTER_CART = 0.09, 0.18, 0.06
_P_CART2PRODUCT = 0.5  # a visit to a carted item often enters from the cart page (code 4)

# Interest dynamics, per visit. JD: 81-91 % of consecutive visits share the leaf category.
_P_SWITCH, _P_SWITCH_AFTER_PAUSE = 0.04, 0.5  # move to another of the user's interests
_P_SIBLING, _P_COUSIN = 0.06, 0.02  # drift to a sibling leaf / anywhere under the top node
# JD: 22-37 % of visits return to a seen sku; redraws of popular skus add to these revisits.
_P_REVISIT, _REVISIT_DECAY, _RECENT = 0.15, 0.5, 8
_N_INTEREST_CDF = np.cumsum((0.5, 0.35, 0.15)).tolist()  # 1, 2 or 3 interest leaves

# Times in seconds, log-normal (median, sigma). JD intervals: quartiles 9 / 22 / 57 s.
_GAP = (math.log(14.0), 1.1)  # between micro-behaviours inside a visit
_LAST_VIEW = (math.log(12.0), 1.2)  # on the page after the visit's last micro-behaviour
_LIST = (math.log(6.0), 1.6)  # on lists between two product pages
_P_PAUSE, _PAUSE = 0.03, (math.log(900.0), 0.8)  # a break, after which interests shift
_LENGTH = (math.log(30.0), 0.7)  # micro events above min_events (JD median ~50)

_U_COLS, _Z_COLS = 16, 7  # random numbers drawn per visit, see _user_session


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate; every field can be set from a ``synthetic:key=value`` spec."""

    users: int = 1000  # users, one session each
    seed: int = 0  # seeds the popularity tables and, with the user index, each user
    levels: int = 3  # depth of the category tree; events carry the path coarse..leaf
    branching: int = 4  # children per category node: branching**levels leaves
    items_per_leaf: int = 40  # skus per leaf category
    zipf: float = 1.1  # popularity of the rank-r item (and leaf) is proportional to r**-zipf
    min_events: int = 20  # micro events per session, at least
    max_events: int = 200  # micro events per session, at most
    start_ts: float = 1_700_000_000.0  # sessions start within the day after this

    def __post_init__(self) -> None:
        checks = {
            "users >= 1": self.users >= 1,
            "seed >= 0": self.seed >= 0,
            "levels >= 1": self.levels >= 1,
            "branching >= 2": self.branching >= 2,
            "items_per_leaf >= 2": self.items_per_leaf >= 2,
            "zipf >= 0": self.zipf >= 0,
            "1 <= min_events <= max_events": 1 <= self.min_events <= self.max_events,
            f"branching**levels <= {_MAX_LEAVES}": self.branching**self.levels <= _MAX_LEAVES,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"invalid SyntheticConfig: need {', '.join(failed)}")

    @property
    def n_leaves(self) -> int:
        """Number of leaf categories."""
        return self.branching**self.levels


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _leaf_path(config: SyntheticConfig, leaf: int) -> tuple[str, ...]:
    digits = [str(leaf // config.branching**p % config.branching) for p in range(config.levels)]
    digits.reverse()  # most significant digit = top-level node
    return tuple("c" + ".".join(digits[: level + 1]) for level in range(config.levels))


def build_taxonomy(config: SyntheticConfig) -> dict[str, tuple[str, ...]]:
    """Leaf category id -> its path coarse..leaf, e.g. ``"c1.3.0" -> ("c1", "c1.3", "c1.3.0")``."""
    paths = (_leaf_path(config, leaf) for leaf in range(config.n_leaves))
    return {path[-1]: path for path in paths}


class _World:
    """The popularity tables shared by all users of one config."""

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        # Leaf popularity is Zipf over a seeded shuffle, so it does not follow the id order.
        self.leaf_order = np.random.default_rng(config.seed).permutation(config.n_leaves).tolist()
        self.leaf_cdf = _zipf_cdf(config.n_leaves, config.zipf).tolist()
        # Within a leaf, rank 0 is the most popular item; ids are leaf * items_per_leaf + rank.
        self.item_cdf = _zipf_cdf(config.items_per_leaf, config.zipf).tolist()
        self._paths: dict[int, tuple[str, ...]] = {}  # only the leaves users touch get named

    def popular_leaf(self, u: float) -> int:
        rank = min(bisect.bisect_right(self.leaf_cdf, u), self.config.n_leaves - 1)
        return int(self.leaf_order[rank])

    def popular_item(self, leaf: int, u: float) -> int:
        rank = min(bisect.bisect_right(self.item_cdf, u), self.config.items_per_leaf - 1)
        return leaf * self.config.items_per_leaf + rank

    def drift(self, leaf: int, depth: int, u: float) -> int:
        """Another leaf sharing all but the last ``depth`` digits with ``leaf``."""
        span = self.config.branching**depth
        base, offset = divmod(leaf, span)
        # Skip over the current leaf so a drift always moves.
        return base * span + (offset + 1 + int(u * (span - 1))) % span

    def path(self, leaf: int) -> tuple[str, ...]:
        found = self._paths.get(leaf)
        if found is None:
            found = self._paths[leaf] = _leaf_path(self.config, leaf)
        return found


def _lognormal(params: tuple[float, float], z: float) -> float:
    return math.exp(params[0] + params[1] * z)


def _visit_codes(u: list[float], revisit: bool, carted: bool) -> list[int]:
    """Behaviour codes of one visit from its uniform draws ``u`` (columns 7..14)."""
    if carted and u[7] < _P_CART2PRODUCT:
        codes = [Behavior.Cart2Product.value]
    else:
        codes = [_ENTRY_CODES[min(bisect.bisect_right(_ENTRY_CDF, u[8]), len(_ENTRY_CODES) - 1)]]
    n_details = bisect.bisect_right(_DETAILS_CDF, u[9])
    for j in range(min(n_details, 3)):
        codes.append(_DETAIL_CODES[min(bisect.bisect_right(_DETAIL_CDF, u[10 + j]), 2)])
    if u[13] < (_P_CART_REVISIT if revisit else _P_CART_NEW):
        codes.append(Behavior.Cart.value)
        if u[14] < _P_ORDER_AFTER_CART:
            codes.append(Behavior.Order.value)
    return codes


def _user_session(world: _World, index: int) -> Session:
    config = world.config
    rng = np.random.default_rng([config.seed, index])
    head = rng.random(2).tolist()
    extra = round(_lognormal(_LENGTH, float(rng.standard_normal())))
    n_events = min(config.min_events + extra, config.max_events)
    # One row of draws per possible visit (a visit has at least one micro event): two numpy
    # calls per user instead of a dozen per visit.
    uniform = rng.random((n_events, _U_COLS)).tolist()
    normal = rng.standard_normal((n_events, _Z_COLS)).tolist()

    n_interests = min(bisect.bisect_right(_N_INTEREST_CDF, head[0]) + 1, config.n_leaves)
    interests: list[int] = []
    for draw in rng.random(8 * n_interests).tolist():  # distinct popular leaves
        leaf = world.popular_leaf(draw)
        if leaf not in interests:
            interests.append(leaf)
        if len(interests) == n_interests:
            break
    active = 0

    user_id = f"u{index}"
    clock = int(head[1] * 86_400)  # integer seconds after start_ts, like the JD files
    events: list[Event] = []
    recent: list[int] = []  # distinct recent items, most recent first
    carted: set[int] = set()
    paused = False
    emitted = 0
    for u, z in zip(uniform, normal, strict=False):
        if emitted >= n_events:
            break
        if events:
            if len(interests) > 1 and u[0] < (_P_SWITCH_AFTER_PAUSE if paused else _P_SWITCH):
                active = (active + 1 + int(u[1] * (len(interests) - 1))) % len(interests)
            if u[2] < _P_SIBLING:
                interests[active] = world.drift(interests[active], 1, u[3])
            elif u[2] < _P_SIBLING + _P_COUSIN and config.levels > 1:
                interests[active] = world.drift(interests[active], config.levels - 1, u[3])
        revisit = len(recent) > 1 and u[4] < _P_REVISIT
        if revisit:
            # Recent items are likelier; index 0 is the item just seen, never revisited at once.
            rank = 1 + int(math.log(max(u[5], 1e-12)) / math.log(_REVISIT_DECAY))
            item = recent[min(rank, len(recent) - 1)]
        else:
            item = world.popular_item(interests[active], u[6])
            if recent and item == recent[0]:
                leaf_start = item - item % config.items_per_leaf
                item = leaf_start + (item - leaf_start + 1) % config.items_per_leaf
        if item in recent:
            recent.remove(item)
        recent.insert(0, item)
        del recent[_RECENT:]

        leaf = item // config.items_per_leaf
        path = world.path(leaf)
        codes = _visit_codes(u, revisit, item in carted)[: n_events - emitted]
        if Behavior.Cart.value in codes:
            carted.add(item)
        item_id = f"i{item}"
        inside = 0  # seconds between the visit's micro-behaviours
        for j, code in enumerate(codes):
            if j:
                gap = max(1, round(_lognormal(_GAP, z[j - 1])))
                clock += gap
                inside += gap
            events.append(
                MicroEvent(
                    user_id=user_id,
                    ts=config.start_ts + clock,
                    item_id=item_id,
                    categories=list(path),
                    behavior=Behavior(code),
                    event_id=f"{user_id}:{emitted + j}",
                )
            )
        emitted += len(codes)
        # The dwell covers the visit and the last view; the list browsing after it does not.
        # The dwell event arrives when the next product page opens, as in the JD layout.
        last_view = max(1, round(_lognormal(_LAST_VIEW, z[5])))
        paused = u[15] < _P_PAUSE
        away = round(_lognormal(_PAUSE if paused else _LIST, z[6])) - (0 if paused else 1)
        clock += last_view + max(0, away)
        events.append(
            DwellEvent(
                kind="dwell",
                user_id=user_id,
                ts=config.start_ts + clock,
                item_id=item_id,
                dwell_s=float(inside + last_view),
                event_id=f"{user_id}:{emitted - 1}:dwell",
            )
        )
    return Session(session_id=user_id, user_id=user_id, events=tuple(events))


def iter_sessions(config: SyntheticConfig) -> Iterator[Session]:
    """Generate the sessions lazily, user by user, in O(events) time per user.

    Each user draws from its own generator seeded by ``(seed, user index)``, so a session does
    not depend on how many users come before or after it.
    """
    world = _World(config)
    for index in range(config.users):
        yield _user_session(world, index)


def generate(config: SyntheticConfig) -> Dataset:
    """Generate every session in memory, with the taxonomy; use `iter_sessions` to stream."""
    started = time.perf_counter()
    sessions = list(iter_sessions(config))
    spec = ",".join(f"{f.name}={getattr(config, f.name)}" for f in dataclasses.fields(config))
    logger.info(
        "generated %d synthetic sessions, %d events in %.1f s",
        len(sessions),
        sum(len(s.events) for s in sessions),
        time.perf_counter() - started,
    )
    return Dataset(name=f"synthetic:{spec}", sessions=sessions, taxonomy=build_taxonomy(config))
