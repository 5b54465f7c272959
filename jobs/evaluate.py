"""Score a checkpoint on a labelled split (GAP, Hit@1, PERR; mAP on request); see `raytrain8m evaluate --help`."""
import sys

from raytrain8m.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
