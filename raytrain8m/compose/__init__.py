"""From kept checkpoints to a submission: fp16/int8 casting, the one-graph ensemble, the starter-compatible export, batch inference."""
