"""Show the model zoo, pin letters, or print it as JSON; see `raytrain8m zoo --help`."""
import sys

from raytrain8m.commands.zoo import main

if __name__ == "__main__":
    sys.exit(main())
