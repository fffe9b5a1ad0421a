"""`python -m fxscale ...`: the same as the `fxscale` console script."""
import sys

if __name__ == "__main__":
    try:
        from fxscale.cli import main  # importing torch takes seconds: an interrupt here is one line too
    except KeyboardInterrupt:
        print("fxscale: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
