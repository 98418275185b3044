"""A faust worker that does nothing with the HUP input: the ceiling `stream_bench` compares to.

Same faust settings as the profile worker (`stream.app.faust_options`, from the same
HUP_* environment), same input topic, same batching (`stream.guards.take.take_flowing`,
ack after the batch); no state, no model, no output. Once it has consumed
BENCH_NOOP_EXPECT events it writes to BENCH_NOOP_OUT the wall-clock times of its first
and last batch, the size of the first and the total count, so the rate excludes the
start-up before the first batch.

Run: ``python bench/noop_worker.py worker -l warn --without-web``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import faust
import orjson

from stream.app import faust_options
from stream.guards.take import take_flowing
from stream.settings import Settings

settings = Settings()
expected = int(os.environ["BENCH_NOOP_EXPECT"])
out = Path(os.environ["BENCH_NOOP_OUT"])
app = faust.App(f"{settings.app_id}-noop", **faust_options(settings))
source = app.topic(
    settings.input_topic,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",
)


@app.agent(source)
async def consume(stream: faust.Stream[bytes]) -> None:
    """Count batches of events and ack them; record when the expected count is reached."""
    seen, first, first_size = 0, 0.0, 0
    batches = take_flowing(
        stream, settings.batch_size, settings.batch_within_s, settings.batch_idle_s
    )
    async for batch in batches:
        if not batch:  # the input is quiet
            continue
        now = time.time()
        if not first:
            first, first_size = now, len(batch)
        seen += len(batch)
        for event in batch:
            await stream.ack(event)
        if seen >= expected and not out.exists():
            record = {"first": first, "first_size": first_size, "last": now, "events": seen}
            out.write_bytes(orjson.dumps(record))


if __name__ == "__main__":
    app.main()
