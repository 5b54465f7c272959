"""Distil a student model from a teacher ensemble on Ray Train; see `raytrain8m distill --help`."""
import sys

from raytrain8m.commands.distill import main

if __name__ == "__main__":
    sys.exit(main())
