"""normbench's version (pyproject.toml's), recorded in every run's environment."""

__version__ = "0.1.0"
