"""metarec: meta-learning for cold-start recommendation."""

__version__ = "0.1.0"
