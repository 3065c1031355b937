"""The local worker pool (docs/worker-pool.md)."""
