"""Choosing what to keep from a sweep: checkpoint averaging, scoring many checkpoints as Ray tasks, the zoo."""
