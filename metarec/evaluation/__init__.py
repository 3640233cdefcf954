"""Few-shot evaluation: the metrics per state and the full-catalogue ranking."""
