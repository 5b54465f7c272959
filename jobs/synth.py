"""Write a synthetic YouTube-8M in the official frame-level TFRecord format; see `raytrain8m synth --help`."""
import sys

from raytrain8m.commands.synth import main

if __name__ == "__main__":
    sys.exit(main())
