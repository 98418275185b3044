"""A Quix Streams app with one RocksDB state update per event: a stateful peer for `stream_bench`.

It reads the HUP input topic from the start (its own consumer group), parses each event
as JSON and updates a per-user RocksDB state (events seen and last event time, keyed by
the Kafka key = user_id), with Quix's changelog topic and at-least-once commits: the
least a stateful stream processor does per event. No model, no output. Once it has
seen BENCH_PEER_EXPECT events it writes to BENCH_PEER_OUT the wall-clock times of its
first and last event and the count, then stops.

Run: ``python bench/quix_peer.py`` with KAFKA_BOOTSTRAP_SERVERS, HUP_INPUT_TOPIC,
BENCH_PEER_EXPECT, BENCH_PEER_OUT and BENCH_PEER_STATE_DIR set. quixstreams conflicts
with the project's pins, so it gets a venv of its own, which `stream_bench` finds
through BENCH_QUIX_PYTHON (without it the Quix peer is skipped)::

    python3.11 -m venv .venv-quix
    .venv-quix/bin/python -m pip install "quixstreams>=3.20,<4" orjson
    BENCH_QUIX_PYTHON=$PWD/.venv-quix/bin/python .venv/bin/python bench/stream_bench.py
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from quixstreams import Application, State


def main() -> None:
    """Consume until the expected count, then write the timings and stop."""
    expected = int(os.environ["BENCH_PEER_EXPECT"])
    out = Path(os.environ["BENCH_PEER_OUT"])
    app = Application(
        broker_address=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=os.environ["BENCH_PEER_STATE_DIR"],
        loglevel="WARNING",
    )
    topic = app.topic(
        os.environ["HUP_INPUT_TOPIC"], key_deserializer="bytes", value_deserializer="json"
    )
    seen = {"events": 0, "first": 0.0}

    def update(value: dict[str, Any], state: State) -> None:
        state.set("events", state.get("events", 0) + 1)
        state.set("last_ts", value.get("ts"))
        seen["events"] += 1
        if seen["events"] == 1:
            seen["first"] = time.time()
        if seen["events"] == expected:
            record = {"first": seen["first"], "last": time.time(), "events": expected}
            out.write_bytes(orjson.dumps(record))
            app.stop()

    app.dataframe(topic).update(update, stateful=True)
    app.run()


if __name__ == "__main__":
    main()
