"""Learning and speed benchmarks for ef_middleware (run with ``python -m benchmarks``)."""
