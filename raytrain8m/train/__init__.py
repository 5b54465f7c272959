"""Training one model: its config, the Ray Train driver, the worker's entry and read-ahead, the per-worker loop, mixed precision, which failures are retried."""
