"""Train one model (Gated NetVLAD or NeXtVLAD) on Ray Train, tracked in MLflow; see `raytrain8m train --help`."""
import sys

from raytrain8m.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
