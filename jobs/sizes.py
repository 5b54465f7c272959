"""Model sizes (fp32/fp16/int8 MiB, parameters) from the variables each model builds; see `raytrain8m sizes --help`."""
import sys

from raytrain8m.commands.sizes import main

if __name__ == "__main__":
    sys.exit(main())
