"""The whole pipeline on the embedded default, end to end; see `raytrain8m demo --help`."""
import sys

from raytrain8m.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
