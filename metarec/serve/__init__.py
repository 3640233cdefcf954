"""Recommendations for a new user from a trained run: the Python API and `metarec recommend`."""
