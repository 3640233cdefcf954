"""The torch device a run uses (device=cpu | cuda | auto), with its thread count and determinism."""
from __future__ import annotations

import os

import torch

from metarec.errors import UserError


def setup_device(device_cfg) -> torch.device:
    """The torch device `device=...` names, with its thread count and determinism applied."""
    if device_cfg.threads:
        torch.set_num_threads(device_cfg.threads)
    if device_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS' own condition, read when it starts
        torch.use_deterministic_algorithms(True)
    return resolve_device(device_cfg.name)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda, but this torch sees no CUDA GPU (torch.cuda.is_available() is False): "
                        "use device=cpu or device=auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"device={name!r} is not one of cpu, cuda, auto")
    return torch.device(name)
