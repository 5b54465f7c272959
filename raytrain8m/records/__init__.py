"""What a run leaves behind and how it is scored: metrics, the holdout split, member predictions, checkpoints, MLflow runs, evaluation."""
