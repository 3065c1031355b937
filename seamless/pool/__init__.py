"""The local worker pool (worker-pool.md)."""
