"""The faust-streaming worker that keeps profiles up to date from Kafka."""
