"""`python -m fxscale ...`: the same as the `fxscale` console script."""
import sys

from fxscale.cli import main

if __name__ == "__main__":
    sys.exit(main())
