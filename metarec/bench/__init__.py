"""`metarec bench`: the engine against the per-task reference loop, per algorithm and per data size."""
