"""Composition root: config, the `tidings` CLI, the embedded broker and ClickHouse,
process supervision, the metrics endpoint and the demo."""
