"""The torch device a run uses (device=cpu | cuda | auto), with its thread count and determinism."""
from __future__ import annotations

import logging
import os

import torch

from metarec.errors import UserError


log = logging.getLogger("metarec")


def cpu_count() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs(cpus: int) -> int:
    """How many jobs of this sweep share the machine: the joblib launcher's n_jobs (joblib's meaning:
    -1 every core, -2 all but one), capped at the cores; 1 for any other launcher or a single run."""
    from hydra.core.hydra_config import HydraConfig
    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().get("launcher") or {}
    n = launcher.get("n_jobs")
    if not isinstance(n, int) or "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    return max(1, min(cpus, n if n > 0 else cpus + 1 + n))


def thread_share(threads: int | None, jobs: int, cpus: int) -> tuple[int | None, str | None]:
    """(the torch threads to set, a warning). A user's device.threads stands, with a warning when the
    parallel jobs then ask for more threads than there are cores (two MAML runs on ml-100k that each
    took both cores of a 2-core machine trained at about 1,130 tasks/s each, against about 3,000 each
    with one thread apiece: their thread pools preempt each other). device.threads=null with
    parallel jobs: each job takes an equal share of the cores; alone: torch's default (None)."""
    if threads:
        warning = None
        if threads * jobs > cpus:
            warning = (f"device.threads={threads} in {jobs} parallel jobs asks for {threads * jobs} threads on {cpus} "
                       f"cores: the jobs will starve each other; use device.threads={max(1, cpus // jobs)} "
                       "or leave it null (each job then takes its share)")
        return threads, warning
    return (max(1, cpus // jobs), None) if jobs > 1 else (None, None)


def setup_device(device_cfg) -> torch.device:
    """The torch device `device=...` names, with its thread count (a share of the cores when parallel
    sweep jobs run beside it) and determinism applied."""
    cpus = cpu_count()
    threads, warning = thread_share(device_cfg.threads, parallel_jobs(cpus), cpus)
    if warning:
        log.warning(warning)
    if threads:
        torch.set_num_threads(threads)
    if device_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' own condition, read when it starts
        torch.use_deterministic_algorithms(True)
    return resolve_device(device_cfg.name)


def resolve_device(name: str) -> torch.device:
    """device.name (its rule: one of cpu, cuda, auto) as a torch device this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda, but this torch sees no CUDA GPU (torch.cuda.is_available() is False): "
                        "use device=cpu or device=auto")
    return torch.device(name)
