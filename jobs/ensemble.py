"""Build, weigh and export an ensemble of zoo models as one TF graph; see `raytrain8m ensemble --help`."""
import sys

from raytrain8m.commands.ensemble import main

if __name__ == "__main__":
    sys.exit(main())
