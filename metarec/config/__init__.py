"""The config schema with each key's range, Hydra composition outside a run, and the checks before a run."""
