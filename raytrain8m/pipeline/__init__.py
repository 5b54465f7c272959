"""The whole pipeline on the embedded default (the demo) and its report."""
