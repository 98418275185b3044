"""HUP: hierarchical user profiles from micro-behaviours (model, features, training, evaluation).

Framework-free: nothing here imports Kafka, faust, RocksDB or Prometheus.
"""
