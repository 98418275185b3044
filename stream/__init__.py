"""The faust-streaming worker that keeps profiles up to date from Kafka.

Three rooms: this package's modules are the worker (`stream.app`, `stream.agents`,
`stream.processor`, ...); `stream.guards` holds the faust guards the agents take their
batches through; `stream.devtools` holds the dev tools (broker, producer, tail, demo,
the ``hup-stream`` CLI), which the worker never imports.
"""
