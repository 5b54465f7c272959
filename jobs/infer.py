"""Predict the test set with an exported ensemble and write the Kaggle submission CSV; see `raytrain8m infer --help`."""
import sys

from raytrain8m.commands.infer import main

if __name__ == "__main__":
    sys.exit(main())
