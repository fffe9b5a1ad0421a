"""The one version source: pyproject.toml reads it for the wheel, `fxscale.__version__` and `fxscale --version`."""
__version__ = "0.1.0"
