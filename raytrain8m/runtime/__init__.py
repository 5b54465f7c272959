"""Run-time plumbing every stage shares: errors, settings, lazy TensorFlow, atomic writes, version-sensitive hooks, the local-Ray policy, shared flags, GPU profiles."""
