"""Checkpoints: plain dicts of tensors and containers, written atomically, read with weights_only=True."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from metarec.errors import UserError


def save(obj: dict, path: str | Path) -> None:
    """Write to a temp file beside `path`, fsync, then rename: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path) -> dict:
    """Read a metarec checkpoint; anything else (or anything that would run code) is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: pass checkpoint=PATH to a .pt file in a run's checkpoints/ folder")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} was refused: it holds objects that plain-data loading does not allow "
                        f"and that could run code ({first[:160]}); only load checkpoints that metarec wrote") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"checkpoint {path} is not a readable checkpoint (truncated or not a torch file: "
                        f"{str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})") from None
    if not isinstance(obj, dict) or not {"model", "config", "step"} <= obj.keys():
        raise UserError(f"checkpoint {path} is not a metarec checkpoint (no model/config/step): "
                        f"pass a checkpoints/last.pt or best.pt written by metarec train")
    return obj
