"""`python -m raytrain8m <command> [flags…]`: the `raytrain8m` console script."""
import sys

from raytrain8m.commands import main

if __name__ == "__main__":
    sys.exit(main())
