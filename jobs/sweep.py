"""Train a grid of models on Ray Tune, then build the zoo (the paper's Table 1); see `raytrain8m sweep --help`."""
import sys

from raytrain8m.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
