"""Compress a checkpoint to fp16 or int8; see `raytrain8m compress --help`."""
import sys

from raytrain8m.commands.compress import main

if __name__ == "__main__":
    sys.exit(main())
