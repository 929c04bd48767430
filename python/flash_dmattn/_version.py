# The package version: the one place it is written (pyproject.toml reads it through scikit-build-core).
__version__ = "0.1.0"
