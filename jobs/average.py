"""Average a model's checkpoints: a step range, a list, or an --auto search; see `raytrain8m average --help`."""
import sys

from raytrain8m.commands.average import main

if __name__ == "__main__":
    sys.exit(main())
